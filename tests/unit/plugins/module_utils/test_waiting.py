"""The engine's one bounded wait: QMP connect, QMP polls, a QEMU's exit and its start all use it."""

from __future__ import annotations

import time

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import Deadline, wait_until


def test_returns_the_first_truthy_value():
    answers = iter([None, 0, "", {"status": "completed"}])
    assert wait_until(lambda: next(answers), 5, 0) == {"status": "completed"}


def test_gives_none_after_the_deadline_and_looks_once_more_after_the_last_pause():
    looks = []
    pauses = []
    started = time.monotonic()

    def pause(seconds):
        pauses.append(seconds)
        time.sleep(seconds)
    assert wait_until(lambda: looks.append(time.monotonic()), 0.05, 0.01, pause=pause) is None
    assert 0.05 <= time.monotonic() - started < 1
    assert len(looks) == len(pauses) + 1 and set(pauses) == {0.01}
    assert looks[-1] - started > 0.05, "the last look comes after the deadline"


def test_looks_at_least_once_without_time():
    assert wait_until(lambda: True, 0, 1, pause=pytest.fail) is True
    looks = []
    assert wait_until(lambda: looks.append(1), 0, 1, pause=pytest.fail) is None
    assert looks == [1]


def test_a_check_may_give_up_early():
    def check():
        raise LookupError("QEMU exited")
    with pytest.raises(LookupError):
        wait_until(check, 60, 0.01)


def test_a_shared_deadline_bounds_several_waits():
    deadline = Deadline(0.05)
    assert wait_until(lambda: False, deadline, 0.01) is None
    assert deadline.passed() and deadline.remaining() == 0
    assert wait_until(lambda: False, deadline, 10, pause=pytest.fail) is None, "no pause once it has passed"
