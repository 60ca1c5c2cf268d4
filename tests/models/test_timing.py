"""The timer: intervals per name in order, and their sums."""

from __future__ import annotations

import pytest
import torch

from redvtp_eval.models.timing import Timer


def test_intervals_are_kept_in_order_and_summed():
    timer = Timer("cpu")
    for _ in range(3):
        with timer("step"):
            torch.ones(8).sum()
    with timer("prune"):
        pass
    steps = timer.intervals("step")
    assert len(steps) == 3 and all(value >= 0 for value in steps)
    assert timer.seconds == {"step": pytest.approx(sum(steps)), "prune": timer.intervals("prune")[0]}
    assert timer.intervals("vision") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a GPU")
def test_cuda_intervals_wait_for_the_device_only_when_read(monkeypatch):
    timer, waits = Timer("cuda"), []
    synchronize = torch.cuda.Event.synchronize
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda event: waits.append(1) or synchronize(event))
    for _ in range(4):
        with timer("step"):
            torch.ones(1024, device="cuda").sum()
    assert waits == []
    assert len(timer.intervals("step")) == 4 and waits == [1]
