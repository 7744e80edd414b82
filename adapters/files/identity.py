"""File identity that survives renames and tells a reused inode from the file it replaced.

Drop and snapshot modes read stable (finished) files, so their identity is
``dev-ino-size-hash``: device and inode survive a rename (also into an archive folder on
the same file system), the size and a BLAKE2 hash of the first and last 4 KiB tell a
new file that got a freed inode from the old one (daily exports often reuse the inode
of yesterday's deleted file and share its header and first rows, but not its end).

Tail mode follows a growing file, so size and end are not fixed: it keeps device,
inode and a fingerprint of the first ``fp_len`` bytes (up to 1 KiB, grown as the file
grows) and checks that prefix to detect a truncate-and-rewrite. Blocking I/O: call from
a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

EDGE_BYTES = 4096
HEAD_FP_BYTES = 1024


def _hash(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def stable_identity(path: Path, st: os.stat_result) -> str:
    """Identity of a finished file (``dev-ino-size-hash``)."""
    with open(path, "rb") as f:
        head = f.read(EDGE_BYTES)
        tail = b""
        if st.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
            tail = f.read(EDGE_BYTES)
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{_hash(head, tail)}"


@dataclass(frozen=True, slots=True)
class HeadPrint:
    """Fingerprint of a growing file's first ``length`` bytes."""

    length: int
    digest: str

    @staticmethod
    def of(fd: int, length: int = HEAD_FP_BYTES) -> HeadPrint:
        data = os.pread(fd, length, 0)
        return HeadPrint(len(data), _hash(data))

    def matches(self, fd: int) -> bool:
        """Does the file still start with the bytes this print was taken from?"""
        if self.length == 0:
            return True
        data = os.pread(fd, self.length, 0)
        return len(data) == self.length and _hash(data) == self.digest

    def grown(self, fd: int, size: int) -> HeadPrint:
        """A longer print once the file has grown (call only after :meth:`matches`)."""
        if self.length >= HEAD_FP_BYTES or size <= self.length:
            return self
        return HeadPrint.of(fd)


def header_safe_name(name: str) -> str:
    """A file name as printable ASCII, for NATS headers and log lines."""
    text = name.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
