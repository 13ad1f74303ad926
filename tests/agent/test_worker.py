"""The one worker lifecycle: initialize → loop → shutdown; errors stored and re-raised; shared stop."""

from __future__ import annotations

import threading

import pytest

from agent.core.errors import SourceError
from agent.core.worker import Worker


class _Counter(Worker):
    """Counts turns; optionally fails at set-up, at turn `fail_at`, or finishes after `done_at` turns."""

    def __init__(self, name="counter", stop_event=None, *, fail_setup=None, fail_at=None, done_at=None) -> None:
        super().__init__(name, stop_event)
        self.turns, self.events = 0, []
        self.fail_setup, self.fail_at, self.done_at = fail_setup, fail_at, done_at
        self.turned = threading.Event()

    def initialize(self) -> None:
        self.events.append("initialize")
        if self.fail_setup is not None:
            raise self.fail_setup

    def loop_once(self):
        self.turns += 1
        self.turned.set()
        if self.turns == self.fail_at:
            raise ValueError("boom")
        if self.turns == self.done_at:
            return False
        self.stop_event.wait(0.01)
        return True

    def on_error(self, exc: BaseException) -> None:
        self.events.append(f"error {type(exc).__name__}")

    def shutdown(self) -> None:
        self.events.append("shutdown")


def test_loop_runs_until_stopped_then_shuts_down_on_its_own_thread() -> None:
    worker = _Counter()
    worker.start()
    assert worker.turned.wait(10)
    assert worker.stop(5)
    assert not worker.alive and worker.turns >= 1
    assert worker.events == ["initialize", "shutdown"]
    worker.check()  # no error: nothing raised


def test_a_worker_whose_work_is_done_ends_by_itself() -> None:
    worker = _Counter(done_at=3)
    worker.start()
    assert worker.join(10)
    assert worker.turns == 3 and worker.events == ["initialize", "shutdown"]


def test_a_bug_is_stored_and_re_raised_wrapped_with_the_worker_name() -> None:
    worker = _Counter("ingest", fail_at=2)
    worker.start()
    assert worker.join(10)
    assert worker.events == ["initialize", "error ValueError", "shutdown"]
    with pytest.raises(RuntimeError, match="ingest thread failed: ValueError"):
        worker.check()
    with pytest.raises(RuntimeError):  # it stays raised: a later call still sees it
        worker.check()


def test_our_own_errors_are_re_raised_as_they_are() -> None:
    worker = _Counter(fail_setup=SourceError("camera 3 is not there"))
    worker.start()
    assert worker.join(10)
    assert worker.turns == 0 and worker.events == ["initialize", "error SourceError", "shutdown"]
    with pytest.raises(SourceError, match="camera 3 is not there"):
        worker.check()


def test_one_shared_event_stops_every_sibling() -> None:
    halt = threading.Event()
    workers = [_Counter(f"reader-{i}", halt) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        assert worker.turned.wait(10)
    halt.set()
    assert all(worker.join(10) for worker in workers)
    assert all(worker.events == ["initialize", "shutdown"] for worker in workers)


def test_stop_before_start_and_join_of_a_never_started_worker_return() -> None:
    worker = _Counter()
    assert worker.stop(0.1)
    assert worker.events == []
