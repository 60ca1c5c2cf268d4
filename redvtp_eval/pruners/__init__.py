"""Pruners by name. Adding one: a module with a ``Pruner`` subclass and a line in ``PRUNERS``."""

from __future__ import annotations

from redvtp_eval.pruners.base import Pruner, PruneContext, VisualAttention
from redvtp_eval.pruners.redvtp import RedVTP

PRUNERS: dict[str, type[Pruner]] = {
    "none": Pruner,
    "redvtp": RedVTP,
}


def make_pruner(name: str, **options) -> Pruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](**options)


__all__ = ["PRUNERS", "Pruner", "PruneContext", "VisualAttention", "make_pruner"]
