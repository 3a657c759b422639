"""The newest-frame hand-off between the subscription callback and the inference worker.

A camera delivers frames faster than a slow model can eat them. Queueing them builds a
backlog whose latency grows without bound; this slot keeps only the newest frame and counts
the ones it overwrote, so the worker always works on the freshest image.
"""
from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class FrameSlot(Generic[T]):
    """A one-item, thread-safe mailbox: ``put`` overwrites, ``take`` blocks until filled."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False
        self.received = 0
        #: Frames overwritten before the worker took them (never processed).
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item`` as the newest frame; return True if an unprocessed one was dropped."""
        with self._cond:
            dropped = self._item is not None
            if dropped:
                self.dropped += 1
            self._item = item
            self.received += 1
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """Remove and return the newest frame; None on timeout or after :meth:`close`."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake any waiting worker; later ``take`` calls return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
