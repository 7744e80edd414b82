"""What a source hands the outbox: events in source order plus the checkpoint reached.

A checkpoint is a JSON-able dict owned by the source that wrote it: the outbox stores
it in the same transaction as the batch's events, and the source resumes exactly after
it. Nothing else reads inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, RoutedMessage

Checkpoint = dict[str, Any]


@dataclass(slots=True)
class ChangeBatch:
    """Events (in source order) plus the checkpoint that the batch reaches."""

    events: list[ChangeEvent] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Messages with a source-chosen subject (e.g. ``type: outbox_table``), after events.
    messages: list[RoutedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters) + len(self.messages)
