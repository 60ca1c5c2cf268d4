"""Jobs on tasks shaped like the six real ones: images stored as ``datasets`` Image features and decoded by
lmms-eval's own task code, upstream YAMLs included from a user's folder, MMBench with no judge, MME's two halves.

The stand-in datasets are a few generated rows in the real tasks' columns, written as parquet with their
Hugging Face features, so lmms-eval loads and decodes them exactly as it does the hub's copies.
"""

from __future__ import annotations

import io
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from datasets import Dataset, Features, Image, Sequence, Value
from helpers import page
from hydra import compose, initialize_config_dir

from redvtp_eval.harness import job
from redvtp_eval.harness.lmms_plugin import TASKS_DIR, link_lmms_eval_tasks
from redvtp_eval.report.reproduce import CONFIG_DIR

QUICK = [
    "wandb.mode=disabled",
    "warmup=0",
    "task.generation.llada_v.gen_length=4",
    "task.generation.llada_v.steps=2",
    "task.generation.llada_v.block_length=4",
]


def png(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    page(size).save(buffer, "PNG")
    return buffer.getvalue()


def write_rows(path: Path, rows: dict, features: dict) -> Path:
    Dataset.from_dict(rows, features=Features(features)).to_parquet(str(path))
    return path


def task_yaml(folder: Path, name: str, include: str, data: Path, split: str, extra: str = "") -> None:
    """A user's task: an upstream YAML included as it is, reading local parquet instead of the hub."""
    (folder / f"{name}.yaml").write_text(
        f"include: {TASKS_DIR / '_lmms_eval' / include}\ntask: {name}\ndataset_path: parquet\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    {split}: {data}\n{extra}"
    )


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory) -> Path:
    link_lmms_eval_tasks()
    folder = tmp_path_factory.mktemp("user_tasks")
    images = [{"bytes": png(), "path": None}, {"bytes": b"not an image", "path": None}]
    images += [{"bytes": png()[:-200], "path": None}]  # truncated: lmms-eval's PIL setting still decodes it
    docvqa = write_rows(
        folder / "docvqa.parquet",
        {
            "questionId": ["1", "2", "3"],
            "question": ["What is the total?", "What is the date?", "Who signed?"],
            "answers": [["12"], ["June 5"], ["Ann"]],
            "image": images,
        },
        {
            "questionId": Value("string"),
            "question": Value("string"),
            "answers": Sequence(Value("string")),
            "image": Image(),
        },
    )
    task_yaml(folder, "standin_docvqa", "docvqa/docvqa_val.yaml", docvqa, "validation")

    options = {"A": ["a cat", "red", "two"], "B": ["a dog", "blue", "three"], "C": ["nan", "green", "nan"]}
    mmbench = write_rows(
        folder / "mmbench.parquet",
        {
            "index": [0, 1, 2],
            "question": ["What is shown?", "What colour?", "How many?"],
            "hint": ["nan"] * 3,
            **options,
            "D": ["nan"] * 3,
            "answer": ["A", "B", "A"],
            "category": ["x", "y", "x"],
            "L2-category": ["p", "q", "p"],
            "source": ["s"] * 3,
            "split": ["dev"] * 3,
            "image": [{"bytes": png(), "path": None}] * 3,
        },
        {
            **{key: Value("string") for key in ("question", "hint", "A", "B", "C", "D", "answer", "category")},
            **{key: Value("string") for key in ("L2-category", "source", "split")},
            "index": Value("int64"),
            "image": Image(),
        },
    )
    task_yaml(folder, "standin_mmbench", "mmbench/mmbench_en_dev.yaml", mmbench, "dev")
    task_yaml(folder, "standin_mmbench_static", "mmbench/mmbench_en_dev_static.yaml", mmbench, "dev")

    mme = write_rows(
        folder / "mme.parquet",
        {
            "question_id": ["a.png", "a.png", "b.png", "b.png"],
            "question": [f"Is it {word}? Please answer yes or no." for word in ("red", "blue", "wet", "dry")],
            "answer": ["Yes", "No", "Yes", "No"],
            "category": ["color", "color", "commonsense_reasoning", "commonsense_reasoning"],
            "image": [{"bytes": png(), "path": None}] * 4,
        },
        {key: Value("string") for key in ("question_id", "question", "answer", "category")} | {"image": Image()},
    )
    task_yaml(folder, "standin_mme", "mme/mme.yaml", mme, "test")
    return folder


def compose_job(tmp_path, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config", overrides=["model=tiny", f"model.path={tmp_path / 'tiny'}", "ratio=0.5", *QUICK, *overrides]
        )


def samples(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "samples.jsonl").read_text().splitlines()]


def test_a_users_task_with_an_undecodable_and_a_truncated_image_completes(tmp_path, user_tasks):
    cfg = compose_job(tmp_path, "task=custom", f"task.include_path={user_tasks}", "task.lmms_task=standin_docvqa")
    metrics = job.run_job(cfg, tmp_path / "job")
    logged = samples(tmp_path / "job")
    assert [entry["doc_id"] for entry in logged] == [0, 1, 2]
    assert logged[1]["failed"].startswith("UnidentifiedImageError") and logged[1]["score"] == 0.0
    assert logged[2]["failed"] is None and logged[2]["truncated_image"] is True
    assert "truncated_image" not in logged[0]
    assert all(isinstance(entry["score"], float) for entry in logged)
    assert metrics["samples"] == 3 and metrics["failed"] == 1 and metrics["lmms_task"] == "standin_docvqa"


def test_a_custom_task_without_its_name_is_refused_before_anything_loads(tmp_path, user_tasks):
    cfg = compose_job(tmp_path, "task=custom", f"task.include_path={user_tasks}")
    with pytest.raises(job.JobError, match=r"task custom needs task.lmms_task=\.\.\. \(see configs/task/custom.yaml\)"):
        job.run_job(cfg, tmp_path / "job")
    cfg = compose_job(tmp_path, "task=custom", f"task.include_path={tmp_path / 'nowhere'}", "task.lmms_task=x")
    with pytest.raises(job.JobError, match="is not a folder of lmms-eval task YAMLs"):
        job.run_job(cfg, tmp_path / "job")


def test_an_oracle_on_a_task_without_answer_regions_is_refused_before_loading(tmp_path, user_tasks, monkeypatch):
    from redvtp_eval.harness import lmms_adapter

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lmms_adapter.PrunedDiffusionVLM, "__init__", load)
    for name in ("oracle", "anti_oracle"):
        task = ["task=custom", f"task.include_path={user_tasks}", "task.lmms_task=standin_docvqa"]
        cfg = compose_job(tmp_path, *task, f"pruner={name}")
        with pytest.raises(job.JobError, match=f"pruner '{name}' needs each sample's answer region.*no 'answer_box'"):
            job.run_job(cfg, tmp_path / name)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused; no judge credentials."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for key in ("OPENAI_API_KEY", "AZURE_API_KEY", "API_TYPE"):
        monkeypatch.delenv(key, raising=False)
    return attempts


def test_mmbench_without_a_judge_scores_by_rule_offline_and_stores_any_answer(
    tmp_path, user_tasks, no_network, monkeypatch, capsys
):
    """Answers with control characters and answers no rule can read: the job completes, connects nowhere,
    scores each row by the judge-free rule and counts the unreadable ones."""
    from redvtp_eval.harness import lmms_adapter

    answers = iter(["A\x01\x1b", "A\x01\x1b", "no idea", "no idea", "B", "B"])  # pruned and unpruned per sample
    real = lmms_adapter.generate
    monkeypatch.setattr(lmms_adapter, "generate", lambda *a, **k: replace(real(*a, **k), text=next(answers)))
    overrides = [
        "task=mmbench_en_dev",
        f"+task.include_path={user_tasks}",
        "task.tasks.paper.llada_v=standin_mmbench",
        "task.tasks_without_judge.paper.llada_v=standin_mmbench_static",
        "task.generation.llada_v.gen_length=4",
    ]
    metrics = job.run_job(compose_job(tmp_path, *overrides), tmp_path / "job")
    assert no_network == []
    assert "no judge configured" in capsys.readouterr().out
    assert metrics["lmms_task"] == "standin_mmbench_static" and "rule-based" in metrics["scoring_note"]
    logged = samples(tmp_path / "job")
    assert [entry["prediction"] for entry in logged] == ["A", "no idea", "B"]
    assert logged[0]["raw_prediction"] == "A\x01\x1b" and "raw_prediction" not in logged[1]
    assert [entry["score"] for entry in logged] == [1.0, 0.0, 0.0]
    assert [entry["unparseable"] for entry in logged] == [False, True, False]
    assert metrics["pruned"]["unparseable"] == metrics["unpruned"]["unparseable"] == 1
    assert metrics["pruned"]["score"] == pytest.approx(100 / 3)
    assert (tmp_path / "job" / "submissions" / "mmbench_en_dev_results.xlsx").exists()


def test_with_a_judge_key_mmbench_keeps_the_judged_task(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=llada_v", "task=mmbench_en_dev"])
    assert job.lmms_task_of(cfg) == ("paper_llada_v_mmbench_en_dev", None)
    monkeypatch.setenv("OPENAI_API_KEY", "YOUR_API_KEY")
    assert job.lmms_task_of(cfg)[0] == "paper_llada_v_mmbench_en_dev_static"


def test_every_mme_row_is_scored_and_both_halves_reach_the_metrics(tmp_path, user_tasks, monkeypatch):
    from redvtp_eval.harness import lmms_adapter

    # in call order: the adapter runs pruned then unpruned on even positions, unpruned then pruned on odd ones
    answers = iter(["Yes", "Yes", "No", "Yes", "maybe", "maybe", "No", "No"])
    real = lmms_adapter.generate
    monkeypatch.setattr(lmms_adapter, "generate", lambda *a, **k: replace(real(*a, **k), text=next(answers)))
    overrides = ["task=mme", f"+task.include_path={user_tasks}", "task.tasks.paper.llada_v=standin_mme", "limit=4"]
    metrics = job.run_job(compose_job(tmp_path, *overrides), tmp_path / "job")
    logged = samples(tmp_path / "job")
    assert [entry["score"] for entry in logged] == [1.0, 0.0, 0.0, 1.0]
    assert [entry["baseline"]["score"] for entry in logged] == [1.0, 1.0, 0.0, 1.0]
    assert [entry["unparseable"] for entry in logged] == [False, False, True, False]
    # lmms-eval's aggregation per category: accuracy over rows + accuracy+ over images (both rows right), in %
    pruned, unpruned = metrics["pruned"]["sub_scores"], metrics["unpruned"]["sub_scores"]
    assert pruned == {"mme_perception_score,none": 50.0, "mme_cognition_score,none": 50.0}
    assert unpruned == {"mme_perception_score,none": 200.0, "mme_cognition_score,none": 50.0}
    assert metrics["pruned"]["score"] == 50.0 and metrics["unpruned"]["score"] == 200.0
