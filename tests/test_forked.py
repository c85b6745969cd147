"""ForkedCall: one call in a forked child process, its result read back (the 2-D reverse registration)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from neuros.plugins.cv.forked import ForkedCall, can_fork

needs_fork = pytest.mark.skipif(not can_fork(), reason="fork: Linux only")


@needs_fork
def test_the_call_runs_in_a_child_and_its_result_comes_back():
    parent = os.getpid()
    data = np.arange(12.0).reshape(3, 4)  # the child sees the parent's memory: nothing is sent to it
    with ForkedCall(lambda: (os.getpid(), data.sum(), data.T.copy())) as call:
        pid, total, back = call.result()
    assert pid != parent and total == data.sum() and np.array_equal(back, data.T)


@needs_fork
def test_calls_run_at_the_same_time():
    t0 = time.perf_counter()
    with ForkedCall(lambda: time.sleep(0.6) or 1) as a, ForkedCall(lambda: time.sleep(0.6) or 2) as b:
        assert (a.result(), b.result()) == (1, 2)
    assert time.perf_counter() - t0 < 1.1


@needs_fork
def test_an_error_in_the_child_is_raised_here_as_without_the_child():
    parent = os.getpid()

    def fails():
        raise ValueError(f"bad input (in {'the child' if os.getpid() != parent else 'the caller'})")

    with ForkedCall(fails) as call, pytest.raises(ValueError, match="in the caller"):
        call.result()


@needs_fork
def test_a_child_that_dies_is_replaced_by_the_call_here():
    parent = os.getpid()

    def dies_in_the_child():
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return "computed by the caller"

    with ForkedCall(dies_in_the_child) as call:
        assert call.result() == "computed by the caller"


@needs_fork
def test_a_child_that_does_not_answer_in_time_is_killed_and_replaced():
    parent = os.getpid()
    t0 = time.perf_counter()
    with ForkedCall(lambda: time.sleep(60) if os.getpid() != parent else "computed by the caller") as call:
        pid = call.pid
        assert call.result(timeout=0.5) == "computed by the caller"
    assert time.perf_counter() - t0 < 5 and call.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@needs_fork
def test_leaving_without_the_result_kills_the_child():
    t0 = time.perf_counter()
    with ForkedCall(lambda: time.sleep(60)) as call:
        pid = call.pid
        assert pid is not None
    assert time.perf_counter() - t0 < 5 and call.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped


def test_without_fork_the_call_runs_when_its_result_is_asked(monkeypatch):
    import neuros.plugins.cv.forked as forked

    monkeypatch.setattr(forked, "can_fork", lambda: False)
    ran = []
    call = forked.ForkedCall(lambda: ran.append(os.getpid()) or 7)
    assert ran == [] and call.pid is None
    assert call.result() == 7 and ran == [os.getpid()]
