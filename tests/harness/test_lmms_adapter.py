"""The adapter under lmms-eval: in-process, through the entry point, and from lmms-eval's own CLI."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from redvtp_eval.harness.offline_tasks import TASKS_DIR, ensure_offline_tasks
from redvtp_eval.harness.samples_log import SamplesLog

QUICK_GENERATION = "gen_length=8,steps=4,block_length=8,think_mode=no_think"


@pytest.fixture(scope="module", autouse=True)
def offline(monkeypatch_module):
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    ensure_offline_tasks()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def evaluate(tiny_dir, tasks_dir, task: str, log_path, limit: int, **options):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str

    from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM

    arguments = ",".join(
        f"{k}={v}"
        for k, v in {"pretrained": tiny_dir, "dtype": "float32", "device": "cpu", "warmup": 0, **options}.items()
    )
    adapter = PrunedDiffusionVLM.create_from_arg_string(arguments, {"log_path": str(log_path)})
    return simple_evaluate(
        model=adapter,
        model_args=arguments,
        tasks=[task],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        gen_kwargs=QUICK_GENERATION,
        limit=limit,
        bootstrap_iters=0,
        process_docs_parallel=1,
        datetime_str=get_datetime_str(),
    )


@pytest.mark.parametrize("task", ["redvtp_toy_docvqa", "redvtp_toy_mcq"])
def test_ratio_one_answers_like_the_unpruned_model(tiny_dir, tmp_path, task):
    kept = evaluate(
        tiny_dir, TASKS_DIR, task, tmp_path / "kept.jsonl", 3, pruner="redvtp", ratio=1.0, paired_baseline=False
    )
    plain = evaluate(tiny_dir, TASKS_DIR, task, tmp_path / "none.jsonl", 3, pruner="none")
    predictions = lambda results: [s["filtered_resps"] for s in results["samples"][task]]  # noqa: E731
    assert predictions(kept) == predictions(plain)
    logged = SamplesLog(tmp_path / "kept.jsonl").read()
    assert [entry["doc_id"] for entry in logged] == [0, 1, 2]
    assert all(entry["visual_tokens_after"] == entry["visual_tokens_before"] > 0 for entry in logged)
    assert kept["config"]["model_args"].startswith(f"pretrained={tiny_dir},dtype=float32")
    assert "ratio=1.0" in kept["config"]["model_args"]


def edited_toy_task(tmp_path, name: str, edit) -> Path:
    """A copy of the toy DocVQA task named ``name`` over its first three documents, as ``edit(frame)`` leaves them."""
    tasks_dir = tmp_path / "tasks"
    (tasks_dir / "data").mkdir(parents=True)
    shutil.copy(TASKS_DIR / "utils.py", tasks_dir)
    yaml = (TASKS_DIR / "redvtp_toy_docvqa.yaml").read_text().replace("task: redvtp_toy_docvqa", f"task: {name}")
    (tasks_dir / f"{name}.yaml").write_text(yaml.replace("data/redvtp_toy_docvqa.parquet", f"data/{name}.parquet"))
    frame = pd.read_parquet(TASKS_DIR / "data" / "redvtp_toy_docvqa.parquet").head(3)
    edit(frame)
    frame.to_parquet(tasks_dir / "data" / f"{name}.parquet", index=False)
    return tasks_dir


def test_an_undecodable_image_is_a_recorded_failure(tiny_dir, tmp_path):
    def break_image(frame):
        frame.loc[1, "image"] = io.BytesIO(b"this is not a png").getvalue()

    tasks_dir = edited_toy_task(tmp_path, "broken_docvqa", break_image)
    results = evaluate(tiny_dir, tasks_dir, "broken_docvqa", tmp_path / "log.jsonl", 3, pruner="redvtp", ratio=0.5)
    logged = SamplesLog(tmp_path / "log.jsonl").read()
    assert [entry["failed"] is None for entry in logged] == [True, False, True]
    assert logged[1]["failed"].startswith("UnidentifiedImageError")
    assert [s["doc_id"] for s in results["samples"]["broken_docvqa"]] == [0, 1, 2]


def test_a_context_that_holds_image_tags_runs_as_the_official_wrapper_runs_it(tiny_dir, tmp_path):
    """One tag for one image: used where it stands. Two tags for one image: that sample fails, the job goes on."""

    def tag_questions(frame):
        frame.loc[1, "question"] = "Compare <image> with <image>: what color is the box?"
        frame.loc[2, "question"] = "<image>\nWhat color is the box?"

    tasks_dir = edited_toy_task(tmp_path, "tagged_docvqa", tag_questions)
    evaluate(tiny_dir, tasks_dir, "tagged_docvqa", tmp_path / "log.jsonl", 3, pruner="none")
    logged = SamplesLog(tmp_path / "log.jsonl").read()
    assert [entry["failed"] for entry in logged] == [
        None,
        "ImageTagError: the prompt holds 2 <image> tags for 1 images",
        None,
    ]
    from redvtp_eval.harness.offline_tasks import held_out
    from redvtp_eval.models.llada_v import load_llada_v

    model = load_llada_v(tiny_dir, dtype="float32")  # the toy pages come in several sizes: count each one's tokens
    expected = [model.prepare("?", [held_out("redvtp_toy_docvqa", index).image]).visual_tokens for index in (0, 2)]
    assert [logged[index]["visual_tokens_before"] for index in (0, 2)] == expected


def test_the_entry_point_registers_the_adapter_with_lmms_eval():
    from lmms_eval.models import get_model

    from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM

    assert get_model("redvtp_llada_v") is PrunedDiffusionVLM


def test_lmms_eval_cli_runs_the_adapter(tiny_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_eval",
            "--model",
            "redvtp_llada_v",
            "--model_args",
            f"pretrained={tiny_dir},pruner=redvtp,ratio=0.5,dtype=float32,device=cpu,warmup=0",
            "--include_path",
            str(TASKS_DIR),
            "--tasks",
            "redvtp_toy_mcq",
            "--gen_kwargs",
            QUICK_GENERATION,
            "--limit",
            "1",
            "--output_path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "redvtp_toy_mcq" in result.stdout
    assert list((tmp_path / "out").rglob("*_results.json"))


def test_known_tasks_take_their_configured_settings_from_the_stock_cli():
    from redvtp_eval.harness.lmms_adapter import known_generation, task_settings

    docvqa = {"gen_length": 32, "steps": 16, "block_length": 32, "think_mode": "no_think"}
    assert known_generation("docvqa_val", "llada_v") == docvqa
    assert known_generation("paper_llada_v_docvqa_val", "llada_v") == docvqa
    assert known_generation("paper_llada_v_mmbench_en_dev_static", "llada_v")["gen_length"] == 2
    assert known_generation("paper_lavida_docvqa_val", "lavida_llada")["max_new_tokens"] == 32
    assert known_generation("someone_elses_task", "llada_v") == {}
    yaml_kwargs = {"max_new_tokens": 1024, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    assert task_settings(docvqa, yaml_kwargs | {"steps": 8}) == docvqa | {"steps": 8}
    lavida = known_generation("paper_lavida_docvqa_val", "lavida_llada")
    assert task_settings(lavida, yaml_kwargs)["max_new_tokens"] == 32  # the YAML's 1024 is not the user's
    assert task_settings({}, yaml_kwargs) == yaml_kwargs  # an unknown task runs as lmms-eval hands it over


def test_pairing_is_opt_in_for_the_adapter(tiny_dir):
    from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM

    plain = PrunedDiffusionVLM(pretrained=str(tiny_dir), dtype="float32", device="cpu", ratio=0.5)
    paired = PrunedDiffusionVLM(
        pretrained=str(tiny_dir), dtype="float32", device="cpu", ratio=0.5, paired_baseline=True
    )
    assert plain.baseline is None and paired.baseline is not None and paired.baseline.name == "none"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"budget": 0.5, "ratio": 0.5}, "a ratio or a budget, not both"),
        ({"budget": 0.5, "pruner": "none"}, "pruner=none"),
        ({"budget": 2.0}, r"must lie in \(0, 1\], got 2.0"),
    ],
)
def test_budget_model_args_are_checked_before_the_model_loads(arguments, message):
    from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM

    with pytest.raises(ValueError, match=message):
        PrunedDiffusionVLM(pretrained="/nowhere", device="cpu", **arguments)
