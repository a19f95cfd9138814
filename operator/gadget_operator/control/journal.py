"""The operator's event log: a bounded, numbered record of what happened, replayed and then followed.

Like Skaffold's event log: every entry gets the next sequence number (from 1) and a timestamp when it
is appended; the log keeps the last ``capacity`` entries, and ``dropped`` counts the older ones it no
longer holds. A reader (``follow``) first gets every entry still held, then each new one as it comes.

Why a ring of entries and a cursor per reader, not a queue per reader: appending must never wait for a
reader and must cost the same with no reader or a hundred (it sits on the reconciler's hot path). A
reader only remembers the sequence number it reads next and takes entries from the shared ring, so
its backlog is bounded by the ring itself; a reader that falls more than ``capacity`` entries behind
skips what the ring no longer holds and is told how many entries it missed (``Delivery.missed``), the
gap its sequence numbers show as well. Appending wakes the readers that wait, nothing else.

Pure asyncio, no operator types: the entries' payloads are whatever the caller appends
(``control.events``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_CAPACITY = 10_000
"""Entries kept for a replay: the story of a large rollout (one create and one readiness per instance)
at 100 x 100 fills it; a few MB at most."""


@dataclass(slots=True)
class Entry(Generic[T]):
    """Not frozen only because that costs three times as much to build: never changed once appended."""

    sequence: int
    """Position in the log, from 1."""
    timestamp: float
    """Seconds since the epoch when it was appended."""
    payload: T


@dataclass(slots=True)
class Delivery(Generic[T]):
    """One entry as one reader gets it."""

    entry: Entry[T]
    missed: int
    """Entries this reader did not get just before this one: on its first entry, what the log had
    dropped before it; later, what the reader fell too far behind to get."""


class Journal(Generic[T]):
    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("the event log needs room for at least one entry")
        self.capacity = capacity
        self._clock = clock
        self._ring: list[Entry[T] | None] = [None] * capacity
        self._last = 0
        self._changed: asyncio.Event | None = None
        """Set on the next append (or close); exists only while a reader waits."""
        self._closed = False

    @property
    def last_sequence(self) -> int:
        """The sequence number of the newest entry (0 when empty)."""
        return self._last

    @property
    def first_sequence(self) -> int:
        """The sequence number of the oldest entry still held (``last_sequence + 1`` when empty)."""
        return max(1, self._last - self.capacity + 1)

    @property
    def dropped(self) -> int:
        """Entries no longer held because the log is bounded."""
        return self.first_sequence - 1

    def append(self, payload: T) -> Entry[T]:
        self._last += 1
        entry = Entry(self._last, self._clock(), payload)
        self._ring[self._last % self.capacity] = entry
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return entry

    def entries(self) -> list[Entry[T]]:
        """Every entry still held, oldest first."""
        return [self._at(sequence) for sequence in range(self.first_sequence, self._last + 1)]

    def close(self) -> None:
        """End every ``follow``: readers get what is held, then their iteration stops."""
        self._closed = True
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _at(self, sequence: int) -> Entry[T]:
        entry = self._ring[sequence % self.capacity]
        assert entry is not None
        assert entry.sequence == sequence
        return entry

    async def follow(self, *, live: bool = True) -> AsyncIterator[Delivery[T]]:
        """Every entry still held, then (``live``) each new one until the log is closed or the reader
        stops iterating. Without ``live`` the replay ends at the entry that was newest when it began."""
        cursor = self.first_sequence
        end = self._last
        missed = cursor - 1
        while True:
            while cursor <= (self._last if live else end):
                first = self.first_sequence
                if cursor < first:  # too slow: the ring moved on past this reader
                    missed += first - cursor
                    cursor = first
                entry = self._at(cursor)
                cursor += 1
                yield Delivery(entry, missed)
                missed = 0
            if not live or self._closed:
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
