"""Finding a checkpoint directory and loading its safetensors into a module, with a strict key check.

Where it sits: every model loader calls :func:`resolve_checkpoint` and then :func:`load_weights`.
Nothing is downloaded: a hub id is looked up in the local Hugging Face cache only, and a checkpoint
that is not there fails with the command that fetches it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not match the architecture; the message says what to do."""


def resolve_checkpoint(name_or_path: str | Path, hub_id: str) -> Path:
    """A local directory holding ``config.json`` and safetensors, from a path or a hub id in the HF cache."""
    path = Path(name_or_path).expanduser()
    fetch = f"huggingface-cli download {hub_id} --local-dir <dir>"
    hub_like = str(name_or_path).count("/") == 1 and not str(name_or_path).startswith((".", "/", "~"))
    if not path.exists() and hub_like and not path.parent.is_dir():
        try:
            path = Path(snapshot_download(str(name_or_path), local_files_only=True))
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"{name_or_path} is not in the local Hugging Face cache and this tool never downloads. "
                f"Fetch it with `huggingface-cli download {name_or_path}` (or `{fetch}` and pass the directory)."
            ) from None
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}. Fetch the official weights with `{fetch}`.")
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if not weight_files(path):
        missing.append(f"{INDEX}, model.safetensors or model-*.safetensors")
    if missing:
        raise CheckpointError(
            f"{path} is not a complete checkpoint (missing {', '.join(missing)}); fetch it with `{fetch}`."
        )
    return path


INDEX = "model.safetensors.index.json"


def weight_files(path: Path) -> list[Path]:
    """The files that hold the checkpoint's weights: those named by ``model.safetensors.index.json`` (a
    sharded checkpoint) when it exists, else ``model.safetensors`` and ``model-*.safetensors``. Any other
    ``.safetensors`` file in the folder (an adapter, a copy of the vision tower, …) is not the model's."""
    index = path / INDEX
    if index.is_file():
        files = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        absent = [file.name for file in files if not file.is_file()]
        if absent:
            raise CheckpointError(f"{index} names {', '.join(absent)}, which {path} lacks: fetch the missing shards")
        return files
    return sorted({*path.glob("model.safetensors"), *path.glob("model-*.safetensors")})


@dataclass(frozen=True)
class KeyMap:
    """Renames between a checkpoint's parameter names and the module's, by ordered regex rules.

    One module class can then load checkpoints that name the same tensors differently (the original
    OLMo-style LLaDA names of LaViDa, the HF-Llama names of LLaDA-V). Rules are (checkpoint, module) pairs
    of patterns with ``{i}`` for a layer index; names no rule matches are the same on both sides.
    """

    rules: tuple[tuple[str, str], ...]

    @staticmethod
    def _rename(name: str, rules: list[tuple[str, str]]) -> str:
        for source, target in rules:
            pattern = "^" + re.escape(source).replace(r"\{i\}", r"(\d+)") + "$"
            match = re.match(pattern, name)
            if match:
                return target.replace("{i}", match.group(1)) if match.groups() else target
        return name

    def to_module(self, name: str) -> str:
        return self._rename(name, list(self.rules))

    def to_checkpoint(self, name: str) -> str:
        return self._rename(name, [(target, source) for source, target in self.rules])


IDENTITY = KeyMap(())


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _describe(keys: set[str], limit: int = 12) -> str:
    shown = sorted(keys)[:limit]
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def load_weights(
    module: nn.Module, path: Path, dtype: torch.dtype, device: torch.device, key_map: KeyMap = IDENTITY
) -> None:
    """Copy every tensor of the checkpoint's :func:`weight_files` into ``module``; the two key sets must be
    equal after ``key_map``.

    The check runs on the file headers before any tensor is read, so a wrong checkpoint fails in
    seconds and the message names the missing and unexpected keys, as the checkpoint names them.
    """
    files = weight_files(path)
    on_disk: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            on_disk.update(dict.fromkeys(handle.keys(), file))
    expected = {key_map.to_checkpoint(key) for key in module.state_dict()}
    missing, unexpected = expected - set(on_disk), set(on_disk) - expected
    if missing or unexpected:
        parts = [f"checkpoint {path} does not match {type(module).__name__}:"]
        if missing:
            parts.append(f"missing {len(missing)} keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_describe(unexpected)}")
        raise CheckpointError("\n  ".join(parts))
    params = module.state_dict()
    for file in files:
        with safe_open(file, framework="pt", device=str(device)) as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                target = params[key_map.to_module(key)]
                if tensor.shape != target.shape:
                    raise CheckpointError(
                        f"{key} in {file.name} has shape {tuple(tensor.shape)}, the architecture expects "
                        f"{tuple(target.shape)}: config.json and the weights disagree."
                    )
                with torch.no_grad():
                    target.copy_(tensor.to(dtype if tensor.is_floating_point() else tensor.dtype))
