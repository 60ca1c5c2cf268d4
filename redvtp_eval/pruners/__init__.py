"""Pruners: which visual tokens to keep, given what the sampler hands over after a denoising step.

The interface (``base.py``: ``Pruner``, ``PruneContext``, the ``VisualAttention`` protocol), the file format
of trained modules (``trained.py``), one file per method (``redvtp.py``, ``random.py``…) and the registry below.
Adding one: a module with a ``Pruner`` subclass and a line in ``PRUNERS``.

May import: torch and ``redvtp_eval.pruners`` itself.
Must not know: the models, the engine, the harness. A pruner sees positions, spans and (if it asks) an
attention callable, never a network, a tokenizer or lmms-eval.
"""

from __future__ import annotations

import inspect

from redvtp_eval.pruners.adaptinfer import AdaptInfer
from redvtp_eval.pruners.base import PruneContext, Pruner, VisualAttention
from redvtp_eval.pruners.d3tom import D3ToM
from redvtp_eval.pruners.dart import Dart
from redvtp_eval.pruners.divprune import DivPrune
from redvtp_eval.pruners.fastv import FastV, LladaFastV
from redvtp_eval.pruners.lvpruning import LVPruning
from redvtp_eval.pruners.oracle import AntiOracle, Oracle
from redvtp_eval.pruners.pdrop import PDrop
from redvtp_eval.pruners.pooling import Pooling
from redvtp_eval.pruners.ptp import PTP
from redvtp_eval.pruners.random import RandomPruner
from redvtp_eval.pruners.redvtp import RedVTP
from redvtp_eval.pruners.rfm_dip import RfmDip
from redvtp_eval.pruners.sparsevlm import SparseVLM
from redvtp_eval.pruners.star import Star
from redvtp_eval.pruners.transprune import TransPrune
from redvtp_eval.pruners.vflowopt import VFlowOpt
from redvtp_eval.pruners.visionzip import VisionZip
from redvtp_eval.pruners.vscan import VScan

PRUNERS: dict[str, type[Pruner]] = {
    "none": Pruner,
    "redvtp": RedVTP,
    "random": RandomPruner,
    "oracle": Oracle,
    "anti_oracle": AntiOracle,
    "pooling": Pooling,
    "divprune": DivPrune,
    "fastv": FastV,
    "llada_fastv": LladaFastV,
    "pdrop": PDrop,
    "dart": Dart,
    "d3tom": D3ToM,
    "visionzip": VisionZip,
    "sparsevlm": SparseVLM,
    "star": Star,
    "transprune": TransPrune,
    "adaptinfer": AdaptInfer,
    "ptp": PTP,
    "vscan": VScan,
    "vflowopt": VFlowOpt,
    "lvpruning": LVPruning,
    "rfm_dip": RfmDip,
}


def options_of(cls: type[Pruner]) -> list[str]:
    """Keyword options a pruner class accepts, its own and those of the classes it builds on."""
    names = []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__[:-1]:  # not object, whose __init__ takes (*args, **kwargs)
        if "__init__" in vars(klass):
            parameters = inspect.signature(klass.__init__).parameters.values()
            names += [p.name for p in parameters if p.kind in named and p.name != "self"]
    return list(dict.fromkeys(names))


def make_pruner(name: str, **options) -> Pruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    accepted = options_of(PRUNERS[name])
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(f"pruner {name!r} has no option {', '.join(unknown)}; its options: {', '.join(accepted)}")
    return PRUNERS[name](**options)


__all__ = ["PRUNERS", "Pruner", "PruneContext", "VisualAttention", "make_pruner"]
