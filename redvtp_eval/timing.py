"""Interval timing that waits for the device, so that queued GPU work lands inside the interval it belongs to.

Where it sits: the model times its vision encoder with it and the sampler times each denoising step.
CPU work is timed with ``perf_counter``; on CUDA the device is synchronised at both ends of an interval.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Timer:
    """Accumulates seconds per name: ``with timer("vision"): ...`` adds the interval to ``timer.seconds["vision"]``."""

    def __init__(self, device: torch.device | str) -> None:
        self._cuda = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
