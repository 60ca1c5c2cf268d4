"""Interval timing that counts the device's work, so that queued GPU kernels land inside the interval they belong to.

Where it sits: the model times its vision encoder with it, the sampler each denoising step, and
:func:`redvtp_eval.harness.measurement.measure` whole generations. It lives in ``models/`` because the
model is the lowest stage that times itself, and imports go one way (models ← engine ← harness): placed
any higher, the model could not import it. It knows nothing of models: it only needs torch.

On CUDA an interval is the time between two CUDA events recorded on the current stream, read once the
closing event has completed; CPU work is timed with ``perf_counter``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Timer:
    """Accumulates seconds per name: ``with timer("vision"): ...`` adds the interval to ``timer.seconds["vision"]``."""

    def __init__(self, device: torch.device | str) -> None:
        device = torch.device(device)
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._stream is None:
            start = time.perf_counter()
            try:
                yield
            finally:
                self._add(name, time.perf_counter() - start)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        try:
            yield
        finally:
            end.record(self._stream)
            end.synchronize()
            self._add(name, start.elapsed_time(end) / 1000)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
