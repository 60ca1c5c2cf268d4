"""Trained pruner modules (LVPruning's decision modules, RFM+DIP's region focus module): one file format, one loader.

A file holds the method's name, the constructor arguments (``config``), what the modules were trained for
(``meta``: model, command, …) and the state dict; ``torch.load(weights_only=True)`` reads it back. A missing file
says how to train one, a file of another method is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def resolve_module_file(path: str | Path, method: str, command: str) -> Path:
    """A trained-module file as given (absolute, or relative to the working directory), else relative to the
    repository; a missing one says how to train it."""
    given = Path(path).expanduser()
    for candidate in (given, ROOT / given):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{method}: no trained modules at {path}; train them on the frozen model first:\n  {command}\n"
        f"then pass pruner.modules=<file.pt> (the toy's are committed under checkpoints/)"
    )


class TrainedModules(nn.Module):
    """Base of a method's trained modules: :attr:`method` names the file's owner, :attr:`train_command` how to make
    one; subclasses give :meth:`config` (their constructor's arguments) and take ``meta`` in their constructor."""

    method = ""
    train_command = ""

    def __init__(self, meta: dict | None = None) -> None:
        super().__init__()
        self.meta = dict(meta or {})

    def config(self) -> dict:
        raise NotImplementedError

    def save(self, path: Path, meta: dict | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu() for key, value in self.state_dict().items()}
        stored = {"method": self.method, "config": self.config(), "meta": {**self.meta, **(meta or {})}, "state": state}
        torch.save(stored, path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        file = resolve_module_file(path, cls.method, cls.train_command)
        stored = torch.load(file, map_location="cpu", weights_only=True)
        if stored.get("method") != cls.method:
            raise ValueError(f"{file} holds {stored.get('method')!r} modules, not {cls.method}'s")
        modules = cls(**stored["config"], meta=stored.get("meta"))
        modules.load_state_dict(stored["state"])
        return modules.eval()
