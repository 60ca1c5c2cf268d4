"""Interval timing that counts the device's work, so that queued GPU kernels land inside the interval they belong to.

Where it sits: the model times its vision encoder with it, the sampler each denoising step, and
:func:`redvtp_eval.harness.measurement.measure` whole generations. It lives in ``models/`` because the
model is the lowest stage that times itself, and imports go one way (models ← engine ← harness): placed
any higher, the model could not import it. It knows nothing of models: it only needs torch.

On CUDA an interval is the time between two CUDA events recorded on the current stream. Timing must not
make the host wait for the device (the sampler times every step, and a wait per step would stall the
queue), so the events are only read when :attr:`Timer.seconds` or :meth:`Timer.intervals` is asked for:
one wait, on the last event, for all the intervals recorded so far. CPU work is timed with ``perf_counter``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Timer:
    """Seconds per name: ``with timer("vision"): ...`` adds an interval to ``timer.intervals("vision")``, and
    ``timer.seconds["vision"]`` is their sum."""

    def __init__(self, device: torch.device | str) -> None:
        device = torch.device(device)
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._intervals: dict[str, list[float]] = {}
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._stream is None:
            start = time.perf_counter()
            try:
                yield
            finally:
                self._intervals.setdefault(name, []).append(time.perf_counter() - start)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        try:
            yield
        finally:
            end.record(self._stream)
            self._intervals.setdefault(name, [])
            self._pending.append((name, start, end))

    def _resolve(self) -> None:
        """Read the pending events: one wait for the device, on the last one."""
        if self._pending:
            self._pending[-1][2].synchronize()
            for name, start, end in self._pending:
                self._intervals[name].append(start.elapsed_time(end) / 1000)
            self._pending.clear()

    def intervals(self, name: str) -> list[float]:
        """Every interval of ``name``, in the order they were timed."""
        self._resolve()
        return list(self._intervals.get(name, []))

    @property
    def seconds(self) -> dict[str, float]:
        self._resolve()
        return {name: sum(values) for name, values in self._intervals.items()}
