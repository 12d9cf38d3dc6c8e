"""Micro-batching: gather ready files into batches of up to batch_size, waiting at most max_wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from pneumoscan.scheduler.dispatch import Dispatcher


class MicroBatcher:
    """Holds ready paths and submits them as full batches, or as a partial batch once it is due.

    A partial batch is due once its oldest path has waited ``max_wait``. With ``submit_when_idle``
    it is due at once instead: meant for a dispatcher that classifies in the caller's thread
    (embedded mode), where the loop only gets here when the pipeline has nothing in hand, so waiting
    would leave it idle while a file is waiting. Batches still grow under load: whatever becomes
    ready while one batch is being classified goes together in the next.

    Not thread-safe: one loop owns it.
    """

    def __init__(self, dispatcher: Dispatcher, batch_size: int, max_wait: float,
                 clock: Callable[[], float] = time.monotonic, *, submit_when_idle: bool = False) -> None:
        self._dispatcher = dispatcher
        self._batch_size = batch_size
        self._max_wait = 0.0 if submit_when_idle else max_wait
        self._clock = clock
        self._pending: list[str] = []
        self._arrived: list[float] = []  # clock time each pending path was added, oldest first

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, paths: Iterable[str]) -> None:
        """Queue ready paths; each may wait at most max_wait from now."""
        now = self._clock()
        for path in paths:
            self._pending.append(path)
            self._arrived.append(now)

    def seconds_until_due(self) -> float | None:
        """How long until a partial batch is due, or None when nothing is waiting."""
        if not self._arrived:
            return None
        return max(0.0, self._arrived[0] + self._max_wait - self._clock())

    def submit_due(self) -> int:
        """Submit every full batch, and the partial one if it has waited max_wait. Returns paths sent."""
        sent = 0
        while len(self._pending) >= self._batch_size:
            sent += self._send(self._batch_size)
        if self._pending and self.seconds_until_due() == 0.0:
            sent += self._send(len(self._pending))
        return sent

    def flush(self) -> int:
        """Submit everything that is waiting, however small the batch."""
        sent = 0
        while self._pending:
            sent += self._send(min(self._batch_size, len(self._pending)))
        return sent

    def _send(self, count: int) -> int:
        batch = self._pending[:count]
        # Submit before forgetting: if submit raises, the paths stay queued for the next attempt.
        self._dispatcher.submit(batch)
        del self._pending[:count]
        del self._arrived[:count]
        return count
