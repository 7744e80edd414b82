"""One error tree for the whole bridge, split by recoverability.

``RetryableError`` and its children are transient: the supervisor backs off and tries
again (a database or NATS that is down, a cut connection). ``FatalError`` and its
children need a person: a broken config, a missing privilege, a decode error in data
that will not change by waiting. Code raises the most specific class with
``raise ... from e`` so the original cause stays in the traceback.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class RetryableError(BridgeError):
    """A transient failure: back off and try again."""


class SourceUnavailable(RetryableError):
    """A source (database, folder) cannot be reached right now."""


class PublishUnavailable(RetryableError):
    """NATS / JetStream cannot take messages right now."""


class FatalError(BridgeError):
    """A failure that waiting will not fix."""


class ConfigError(FatalError):
    """The configuration is invalid. ``errors`` holds one line per problem, with its path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))


class SourceSetupError(FatalError):
    """A source is reachable but not set up so that capture can work (privileges, wal_level)."""


class DecodeError(FatalError):
    """Bytes from a source could not be decoded (a protocol or format violation)."""



class SnapshotRequestError(BridgeError):
    """A re-snapshot request that a running source declines (a table it does not
    capture). Neither retryable nor fatal: the text is shown to the user as is and the
    source keeps running."""
