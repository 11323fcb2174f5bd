"""The worker plumbing: guarded() ends every run with one Outcome, but lets a closing or exiting run go."""
from __future__ import annotations

import pytest

from napari_unet.core.errors import Cancelled
from napari_unet.widgets._workers import Outcome, guarded


def endless():
    while True:
        yield "progress"


def test_guarded_turns_errors_and_cancels_into_one_outcome():
    def failing():
        yield 1
        raise RuntimeError("deep inside torch")

    events = list(guarded(failing))
    assert events[0] == 1 and len(events) == 2
    assert events[1].status == "failed" and isinstance(events[1].error, RuntimeError)
    assert "deep inside torch" in events[1].details and "failing" in events[1].details

    def cancelled():
        yield 1
        raise Cancelled()

    assert [e.status for e in guarded(cancelled) if isinstance(e, Outcome)] == ["cancelled"]

    def done():
        yield 1
        return "labels"

    (outcome,) = [e for e in guarded(done) if isinstance(e, Outcome)]
    assert outcome.status == "done" and outcome.value == "labels"


def test_closing_a_guarded_run_closes_it_instead_of_yielding():
    """napari quits a worker by closing its generator: a generator that yields then is a RuntimeError."""
    closed = []

    def steps():
        try:
            yield from endless()
        finally:
            closed.append(True)

    run = guarded(steps)
    assert next(run) == "progress"
    run.close()  # raised "generator ignored GeneratorExit" when guarded caught it
    assert closed == [True]
    with pytest.raises(StopIteration):
        next(run)


@pytest.mark.parametrize("exit_error", [KeyboardInterrupt, SystemExit])
def test_interrupts_and_exits_are_not_reported_as_failures(exit_error):
    def steps():
        yield "progress"
        raise exit_error()

    run = guarded(steps)
    assert next(run) == "progress"
    with pytest.raises(exit_error):
        next(run)
