"""Interleaved repetitions: every benchmark compares variants (unpruned vs pruned, plain vs probed vs official).

Why interleave: clock boosts, thermal throttling and neighbours on a shared machine drift over minutes;
running the variants round by round, with the order rotated each round (A B, B A, …), spreads that
drift over all of them alike instead of charging it to whichever ran last.
"""

from __future__ import annotations

from collections.abc import Callable


def alternate(
    variants: dict[str, Callable[[], dict]], warmup: int, runs: int
) -> tuple[dict[str, list[dict]], list[str]]:
    """``warmup`` unrecorded rounds, then ``runs`` recorded ones (the first in the given order); returns each
    variant's results and the order of the recorded calls."""
    names = list(variants)
    results: dict[str, list[dict]] = {name: [] for name in names}
    order: list[str] = []
    for round_index in range(warmup + runs):
        shift = (round_index - warmup) % len(names)
        for name in names[shift:] + names[:shift]:
            result = variants[name]()
            if round_index >= warmup:
                results[name].append(result)
                order.append(name)
    return results, order
