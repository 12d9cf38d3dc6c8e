"""Micro-batching: full batches go at once, partial ones after max_wait, and nothing is lost on errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pneumoscan.scheduler.batcher import MicroBatcher
from pneumoscan.scheduler.dispatch import InlineDispatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A real, minimal Dispatcher: keeps every batch it is handed; can be told to fail."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.failures = failures
        self.attempts = 0

    def submit(self, paths: Sequence[str]) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.batches.append(list(paths))


def _paths(n: int, start: int = 0) -> list[str]:
    return [f"/inbox/{i:03d}.jpeg" for i in range(start, start + n)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_full_batches_are_submitted_immediately(clock: FakeClock) -> None:
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=3, max_wait=10.0, clock=clock)
    batcher.add(_paths(7))
    assert batcher.submit_due() == 6
    assert sink.batches == [_paths(3), _paths(3, 3)]
    assert len(batcher) == 1  # the seventh waits for company or for max_wait


def test_a_partial_batch_waits_for_max_wait(clock: FakeClock) -> None:
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=8, max_wait=2.0, clock=clock)
    assert batcher.seconds_until_due() is None
    batcher.add(_paths(2))
    assert batcher.submit_due() == 0
    assert batcher.seconds_until_due() == pytest.approx(2.0)
    clock.now += 1.5
    batcher.add(_paths(1, 2))  # later arrivals do not restart the clock
    assert batcher.submit_due() == 0
    assert batcher.seconds_until_due() == pytest.approx(0.5)
    clock.now += 0.5
    assert batcher.submit_due() == 3
    assert sink.batches == [_paths(3)]
    assert len(batcher) == 0
    assert batcher.seconds_until_due() is None


def test_no_path_waits_longer_than_max_wait(clock: FakeClock) -> None:
    # Four paths arrive together with batch_size 3, but the loop only gets round to them a
    # little later: the full batch goes, and the leftover must still go max_wait after it came.
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=3, max_wait=1.0, clock=clock)
    batcher.add(_paths(4))
    clock.now += 0.9
    assert batcher.submit_due() == 3
    assert batcher.seconds_until_due() == pytest.approx(0.1)
    clock.now += 0.1
    assert batcher.submit_due() == 1
    assert sink.batches == [_paths(3), _paths(1, 3)]


def test_flush_sends_everything_in_batches(clock: FakeClock) -> None:
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=3, max_wait=60.0, clock=clock)
    batcher.add(_paths(7))
    assert batcher.flush() == 7
    assert sink.batches == [_paths(3), _paths(3, 3), _paths(1, 6)]
    assert len(batcher) == 0
    assert batcher.flush() == 0
    assert sink.attempts == 3


def test_a_failing_dispatcher_keeps_the_paths(clock: FakeClock) -> None:
    sink = Recorder(failures=2)
    batcher = MicroBatcher(sink, batch_size=8, max_wait=1.0, clock=clock)
    batcher.add(_paths(3))
    clock.now += 1.0
    with pytest.raises(ConnectionError):
        batcher.submit_due()
    assert len(batcher) == 3
    with pytest.raises(ConnectionError):
        batcher.flush()
    assert len(batcher) == 3
    assert batcher.submit_due() == 3  # still due: it is retried on the next loop
    assert sink.batches == [_paths(3)]  # once, complete, in order
    assert len(batcher) == 0


def test_a_failing_full_batch_keeps_the_later_ones(clock: FakeClock) -> None:
    sink = Recorder(failures=1)
    batcher = MicroBatcher(sink, batch_size=2, max_wait=60.0, clock=clock)
    batcher.add(_paths(5))
    with pytest.raises(ConnectionError):
        batcher.submit_due()
    assert len(batcher) == 5
    assert batcher.submit_due() == 4
    assert batcher.flush() == 1
    assert sink.batches == [_paths(2), _paths(2, 2), _paths(1, 4)]


def test_inline_dispatcher_classifies_in_the_callers_thread(clock: FakeClock) -> None:
    import threading

    from pneumoscan.domain import Result

    seen: list[tuple[list[str], str]] = []

    def classify(paths: Sequence[str]) -> list[Result]:
        seen.append((list(paths), threading.current_thread().name))
        return [Result(p, "done") for p in paths]

    batcher = MicroBatcher(InlineDispatcher(classify), batch_size=2, max_wait=0.0, clock=clock)
    batcher.add(_paths(3))
    assert batcher.submit_due() == 3
    me = threading.current_thread().name
    assert seen == [(_paths(2), me), (_paths(1, 2), me)]


def test_submit_when_idle_sends_a_lone_path_at_once(clock: FakeClock) -> None:
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=8, max_wait=3600.0, clock=clock, submit_when_idle=True)
    batcher.add(_paths(1))
    assert batcher.seconds_until_due() == 0.0
    assert batcher.submit_due() == 1  # no waiting for company, whatever max_wait says
    assert sink.batches == [_paths(1)]
    assert batcher.seconds_until_due() is None


def test_submit_when_idle_still_fills_batches_from_a_backlog(clock: FakeClock) -> None:
    # What piled up while the previous batch was classified goes out together, batch_size at a time.
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=3, max_wait=3600.0, clock=clock, submit_when_idle=True)
    batcher.add(_paths(7))
    assert batcher.submit_due() == 7
    assert sink.batches == [_paths(3), _paths(3, 3), _paths(1, 6)]


def test_submit_when_idle_keeps_the_paths_when_the_dispatcher_fails(clock: FakeClock) -> None:
    sink = Recorder(failures=1)
    batcher = MicroBatcher(sink, batch_size=8, max_wait=3600.0, clock=clock, submit_when_idle=True)
    batcher.add(_paths(2))
    with pytest.raises(ConnectionError):
        batcher.submit_due()
    assert len(batcher) == 2
    assert batcher.submit_due() == 2
    assert sink.batches == [_paths(2)]


def test_without_submit_when_idle_a_lone_path_waits(clock: FakeClock) -> None:
    # The distributed default: the watcher cannot see whether workers are busy, so it waits for company.
    sink = Recorder()
    batcher = MicroBatcher(sink, batch_size=8, max_wait=3600.0, clock=clock)
    batcher.add(_paths(1))
    assert batcher.submit_due() == 0
    assert sink.batches == []
