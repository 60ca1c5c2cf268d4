"""What the two trainers' commands share: the arguments that name the frozen model and the module file, loading
the model, the command line a card records, and the card's provenance line.

Where it sits: beside the trainers in ``analysis`` (``train_lvpruning``, ``train_rfm``); each adds its own
hyperparameters to :func:`trainer_parser` and writes its own card.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.harness.environment import environment
from redvtp_eval.models.base import DiffusionVLM


def trainer_parser(description: str, lr: float) -> argparse.ArgumentParser:
    """The model, its family, the .pt file to write, the module width and heads, lr, seed, threads and device."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="checkpoint directory or cached hub id")
    parser.add_argument("--family", default="llada_v", choices=list(FAMILIES))
    parser.add_argument("--out", type=Path, required=True, help="the .pt file to write")
    parser.add_argument("--inner", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    return parser


def load_frozen(args: argparse.Namespace) -> DiffusionVLM:
    """The model the modules are trained on, in float32 (the trainers' gradients), with ``--threads`` CPU threads."""
    torch.set_num_threads(args.threads)
    return FAMILIES[args.family].load(args.model, dtype="float32", device=args.device)


def command_line(module: str, argv: list[str] | None) -> str:
    """The command as a user would retype it: ``python -m <module>`` and its arguments."""
    return f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])


def provenance(seconds: float, device: str) -> str:
    """The card's line of how long training took, where, and at which commit."""
    env = environment(device)
    return (
        f"{seconds:.0f} s on {env['device']} ({torch.get_num_threads()} threads), torch {env['libraries']['torch']}, "
        f"Python {platform.python_version()}, commit {env['commit']}"
        + (" plus uncommitted changes" if env["dirty"] else "")
    )
