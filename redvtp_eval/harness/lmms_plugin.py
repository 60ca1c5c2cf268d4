"""The ``lmms_eval.models`` entry point: how ``lmms-eval --model redvtp_llada_v`` finds our adapter.

A module of its own, importing nothing of lmms-eval until called: lmms-eval reads entry points while
``lmms_eval.models`` is being imported, and the adapter module imports ``lmms_eval.models``, so pointing
the entry point at the adapter would be a circular import whenever the adapter is imported first.

It also keeps ``tasks/_lmms_eval`` pointing at the installed lmms-eval's task folder: the
``protocol=paper`` YAMLs in ``tasks/paper`` include upstream's YAMLs through it, since lmms-eval's
``include:`` takes a path. Entry points are read when lmms-eval starts, before it indexes
``--include_path``, so the stock CLI finds the link made.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODEL_NAME = "redvtp_llada_v"
TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
UPSTREAM_LINK = TASKS_DIR / "_lmms_eval"


def link_lmms_eval_tasks() -> Path:
    """Point ``tasks/_lmms_eval`` at the installed ``lmms_eval/tasks`` (made or refreshed, never copied).

    lmms-eval indexes ``tasks/`` without following links, so upstream's tasks are not indexed twice.
    """
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or spec.origin is None:
        raise RuntimeError("lmms-eval is not installed; run `make install`")
    target = (Path(spec.origin).parent / "tasks").resolve()
    if UPSTREAM_LINK.is_symlink():
        if UPSTREAM_LINK.resolve() == target:
            return UPSTREAM_LINK
        UPSTREAM_LINK.unlink()
    elif UPSTREAM_LINK.exists():
        raise RuntimeError(f"{UPSTREAM_LINK} is not a link; remove it so that it can point to {target}")
    try:
        UPSTREAM_LINK.symlink_to(target, target_is_directory=True)
    except FileExistsError:  # another rank made it first
        pass
    return UPSTREAM_LINK


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    link_lmms_eval_tasks()
    return ModelManifest(model_id=MODEL_NAME, simple_class_path="redvtp_eval.harness.lmms_adapter.PrunedDiffusionVLM")
