"""The offline tasks: held-out splits of the toy task, written as the parquet files that ``tasks/`` reads.

    python -m redvtp_eval.harness.offline_tasks        # writes tasks/data/*.parquet (the harness does it on first use)

Where it sits: the lmms-eval task YAMLs in ``tasks/`` score these with lmms-eval's own code:
``redvtp_toy_docvqa`` like DocVQA (ANLS), ``redvtp_toy_mcq`` like AI2D (option letter). Images are PNG
bytes decoded by the task's ``doc_to_visual``, so an undecodable image reaches the model adapter, which
records the sample as failed. ``answer_box`` keeps where the answer is drawn: the adapter maps it to visual
tokens (``LladaV.answer_region``) for the pruners that are told (``needs_region``: oracle, anti_oracle), and the
analysis of which visual tokens a pruner keeps uses it too. ``task_prompt`` gives the exact text lmms-eval
will send, for training.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf

from redvtp_eval.harness.lmms_plugin import TASKS_DIR
from redvtp_eval.harness.toy_task import GENERATOR_VERSION, HELD_OUT_SEED, ToySample, png, sample_at

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = TASKS_DIR / "data"
TASK_CONFIGS = ROOT / "configs" / "task"
SPLIT_SIZE = 64


def docvqa_doc(sample: ToySample, index: int) -> dict:
    return {
        "questionId": f"toy-{index}",
        "question": sample.question,
        "answers": [sample.answer],
        "image": png(sample.image),
        "answer_box": list(sample.answer_box),
    }


def mcq_doc(sample: ToySample, index: int) -> dict:
    return {
        "id": f"toy-{index}",
        "question": sample.choice_question,
        "options": sample.options,
        "answer": str(sample.correct_option),
        "image": png(sample.image),
        "answer_box": list(sample.answer_box),
    }


TASKS = {"redvtp_toy_docvqa": docvqa_doc, "redvtp_toy_mcq": mcq_doc}


def held_out(name: str, index: int) -> ToySample:
    return sample_at(HELD_OUT_SEED + list(TASKS).index(name), index)


def _manifest(size: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "split_size": size, "tasks": list(TASKS)}


def write_offline_tasks(data_dir: Path = DATA_DIR, size: int = SPLIT_SIZE) -> list[Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make_doc in TASKS.items():
        path = data_dir / f"{name}.parquet"
        pd.DataFrame([make_doc(held_out(name, index), index) for index in range(size)]).to_parquet(path, index=False)
        paths.append(path)
    (data_dir / "manifest.json").write_text(json.dumps(_manifest(size)) + "\n")
    return paths


def ensure_offline_tasks() -> None:
    """Write the splits unless the files on disk come from this generator version and split size."""
    manifest = DATA_DIR / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()) != _manifest(SPLIT_SIZE):
        write_offline_tasks()


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads lmms-eval task YAMLs, keeping ``!function`` references as dotted names."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@functools.cache
def _doc_to_text(name: str) -> tuple[Callable, dict]:
    config = yaml.load((TASKS_DIR / f"{name}.yaml").read_text(), Loader=_TaskYamlLoader)
    module, function = config["doc_to_text"].rsplit(".", 1)
    return getattr(importlib.import_module(module), function), config["lmms_eval_specific_kwargs"]["default"]


def task_prompt(name: str, doc: dict) -> str:
    """The question text lmms-eval builds for ``doc``: the task YAML's ``doc_to_text`` with its default kwargs."""
    doc_to_text, kwargs = _doc_to_text(name)
    return doc_to_text(doc, kwargs)


def task_generation(name: str, family: str = "llada_v") -> dict:
    """The generation settings that ``configs/task/<name>.yaml`` gives the task."""
    return dict(OmegaConf.load(TASK_CONFIGS / f"{name}.yaml").generation[family])


if __name__ == "__main__":
    for written in write_offline_tasks():
        print(f"wrote {written}")
