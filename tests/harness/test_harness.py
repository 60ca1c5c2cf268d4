"""The command line end to end: job directory, skip, resume after a kill, sweeps, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import toy_visual_tokens
from omegaconf import OmegaConf

QUICK = [
    "wandb.mode=disabled",
    "task.generation.llada_v.gen_length=8",
    "task.generation.llada_v.steps=4",
    "task.generation.llada_v.block_length=8",
    "warmup=0",
]


def command(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "redvtp_eval", *(["-m"] if multirun else []), *QUICK, *overrides]


def run(*overrides: str, multirun: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(*overrides, multirun=multirun), capture_output=True, text=True, timeout=timeout)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_job_writes_its_directory_then_is_skipped(tmp_path):
    job = tmp_path / "job"
    first = run(f"hydra.run.dir={job}", "limit=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert {"config.yaml", "environment.json", "samples.jsonl", "lmms_eval_results.json", "metrics.json"} <= {
        p.name for p in job.iterdir()
    }
    samples = lines(job / "samples.jsonl")
    assert [s["doc_id"] for s in samples] == [0, 1]
    assert all(s["target"] and s["score"] is not None and s["baseline"]["score"] is not None for s in samples)
    tokens = [toy_visual_tokens("redvtp_toy_docvqa", s["doc_id"]) for s in samples]
    assert [(s["visual_tokens_before"], s["visual_tokens_after"]) for s in samples] == [(n, n // 2) for n in tokens]
    for s, n in zip(samples, tokens):  # the cost of each side by the one FLOP model: pruning after step 1 saves LM work
        assert s["baseline"]["effective_visual_tokens"] == n and n // 2 < s["effective_visual_tokens"] < n
        assert s["flops"]["vision"] == s["baseline"]["flops"]["vision"] > 0
        assert s["flops"]["language_model"] < s["baseline"]["flops"]["language_model"]
        assert s["flops"]["total"] == s["flops"]["vision"] + s["flops"]["language_model"]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["pruned"]["flops"] == sum(s["flops"]["total"] for s in samples) / 2
    assert metrics["samples"] == 2 and metrics["failed"] == 0
    assert metrics["pruned"]["latency_s"]["raw"] == [s["latency_s"] for s in samples]
    assert metrics["unpruned"]["latency_s"]["raw"] == [s["baseline"]["latency_s"] for s in samples]
    assert first.stdout.rstrip().splitlines()[-1] == "samples: 2, failed: 0"
    assert "speed-up (unpruned p50 / pruned p50)" in first.stdout

    again = run(f"hydra.run.dir={job}", "limit=2")
    assert again.returncode == 0 and "already finished" in again.stdout
    assert lines(job / "samples.jsonl") == samples


def test_a_killed_job_resumes_without_losing_or_repeating_samples(tmp_path):
    job = tmp_path / "job"
    log = job / "samples.jsonl"
    process = subprocess.Popen(
        command(f"hydra.run.dir={job}", "limit=4"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (log.exists() and log.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = lines(log)
    assert 1 <= len(before) < 4 and not (job / "metrics.json").exists()

    resumed = run(f"hydra.run.dir={job}", "limit=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = lines(log)
    assert [s["doc_id"] for s in after] == [0, 1, 2, 3]
    assert [s["latency_s"] for s in after[: len(before)]] == [s["latency_s"] for s in before]


def test_a_sweep_over_two_ratios(tmp_path):
    result = run("ratio=1.0,0.25", "limit=1", f"hydra.sweep.dir={tmp_path}", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = {}
    for metrics_file in tmp_path.rglob("metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        kept[metrics["ratio"]] = metrics["pruned"]["visual_tokens_after"]
    tokens = toy_visual_tokens("redvtp_toy_docvqa", 0)
    assert kept == {1.0: tokens, 0.25: int(tokens * 0.25)}


def test_a_d3tom_job_merges_after_each_step_through_the_cli(tmp_path):
    """``pruner=d3tom ratio=0.25`` on the toy model, 4 planned steps: after step k of the window 1..3 a page of N
    visual tokens keeps int(N·0.25^(k/3)); a sample whose stop string ends it early merges less."""
    job = tmp_path / "job"
    result = run(f"hydra.run.dir={job}", "pruner=d3tom", "ratio=0.25", "limit=1")
    assert result.returncode == 0, result.stderr[-3000:]
    (sample,) = lines(job / "samples.jsonl")
    n = toy_visual_tokens("redvtp_toy_docvqa", 0)
    assert sample["failed"] is None and sample["visual_tokens_before"] == n
    assert sample["visual_tokens_after"] == [n, *(int(n * 0.25 ** (k / 3)) for k in (1, 2, 3))][min(sample["steps"], 3)]
    assert "d3tom-r0.25" in result.stdout and f"{n} -> " in result.stdout


def test_a_fast_dllm_job_runs_both_sides_against_the_cache_through_the_cli(tmp_path):
    """``+task.generation.llada_v.fast_dllm=dual`` reaches the sampler on both sides of a D³ToM job: with one block
    of 8 and 4 steps, steps 2–4 run the block's 8 rows against the cached prompt, so each side's LM FLOPs fall
    against the same job uncached, and D³ToM still merges as scheduled."""
    flops = {}
    for cache in ("none", "dual"):
        job = tmp_path / cache
        result = run(
            f"hydra.run.dir={job}",
            "pruner=d3tom",
            "ratio=0.25",
            "limit=1",
            f"+task.generation.llada_v.fast_dllm={cache}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (sample,) = lines(job / "samples.jsonl")
        n = toy_visual_tokens("redvtp_toy_docvqa", 0)
        assert sample["failed"] is None
        assert (
            sample["visual_tokens_after"]
            == [n, *(int(n * 0.25 ** (k / 3)) for k in (1, 2, 3))][min(sample["steps"], 3)]
        )
        flops[cache] = (sample["flops"]["language_model"], sample["baseline"]["flops"]["language_model"])
    assert flops["dual"][0] < flops["none"][0] and flops["dual"][1] < flops["none"][1]


def test_a_budget_job_picks_the_ratio_that_meets_it(tmp_path):
    """``pruner=fastv budget=0.6``: FastV keeps the toy's 4-layer sequence whole through layer 2 of every step, so
    a page of N visual tokens costs (2 + 2·int(N r)/N)/4 of the unpruned model's effective visual tokens whatever
    the answer. The job calibrates on its first sample (held-out page 0, N = 300: 0.6 needs int(300 r) = 60, so
    60/300 <= r < 61/300), runs every sample at that ratio, and says so in the log and the metrics; a page of
    another size may then land just above the budget, and the metrics count it. Resumed, it finds the same ratio."""
    job = tmp_path / "job"
    result = run(f"hydra.run.dir={job}", "pruner=fastv", "budget=0.6", "limit=2")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((job / "metrics.json").read_text())
    ratio = metrics["ratio"]
    assert toy_visual_tokens("redvtp_toy_docvqa", 0) == 300
    assert 60 / 300 <= ratio < 61 / 300 and metrics["budget"]["ratio"] == ratio
    assert (metrics["budget"]["target"], metrics["budget"]["metric"]) == (0.6, "effective_visual_tokens")
    assert metrics["budget"]["calibrated_on"] == {"task": "redvtp_toy_docvqa", "doc_id": 0}
    samples = lines(job / "samples.jsonl")
    fractions = []
    for s in samples:
        tokens = toy_visual_tokens("redvtp_toy_docvqa", s["doc_id"])
        assert s["ratio"] == ratio and s["visual_tokens_after"] == int(tokens * ratio)
        fraction = s["effective_visual_tokens"] / s["baseline"]["effective_visual_tokens"]
        assert fraction == pytest.approx((2 + 2 * int(tokens * ratio) / tokens) / 4)
        assert s["budget"] == {"target": 0.6, "metric": "effective_visual_tokens", "cost_fraction": fraction}
        fractions.append(fraction)
    assert fractions[0] <= 0.6
    assert metrics["budget"]["samples_over_budget"] == sum(fraction > 0.6 for fraction in fractions)
    assert (
        "fastv-budget0.6" in result.stdout
        and f"budget=0.6 by effective_visual_tokens: ratio {ratio:.4f}" in result.stdout
    )

    (job / "metrics.json").unlink()  # a resumed job calibrates again, finds the same ratio and keeps every sample
    resumed = run(f"hydra.run.dir={job}", "pruner=fastv", "budget=0.6", "limit=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((job / "metrics.json").read_text())["ratio"] == ratio
    assert [s["latency_s"] for s in lines(job / "samples.jsonl")] == [s["latency_s"] for s in samples]


def test_a_budget_job_calibrates_an_oracle_with_its_answer_region(tmp_path):
    """The calibration runs are told the first sample's answer region, as the measured ones are: the oracle keeps
    int(N r) of the page's N = 300 visual tokens before the LM, so budget 0.5 needs 150/300 <= r < 151/300."""
    job = tmp_path / "job"
    result = run(f"hydra.run.dir={job}", "pruner=oracle", "budget=0.5", "limit=1")
    assert result.returncode == 0, result.stderr[-3000:]
    ratio = json.loads((job / "metrics.json").read_text())["ratio"]
    assert 150 / 300 <= ratio < 151 / 300
    (sample,) = lines(job / "samples.jsonl")
    assert sample["failed"] is None and sample["visual_tokens_after"] == 150


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=gpt5"], "Available options in 'model'"),
        (["ratio=0.25", "budget=0.5"], "error: ratio and budget are exclusive: budget=0.5 picks the ratio"),
        (["budget=1.5"], "budget is a fraction of the unpruned model's cost and must lie in (0, 1], got 1.5"),
        (
            ["budget=0.5", "budget_metric=latency"],
            "budget_metric 'latency' is not one of effective_visual_tokens, flops",
        ),
        (["pruner=none", "budget=0.5"], "pruner=none (the unpruned model) has none"),
        (["task=vqav9"], "Available options in 'task'"),
        (["pruner=no_such_pruner"], "Available options in 'pruner'"),
        (["ratio=0"], "error: ratio is the fraction of visual tokens kept and must lie in (0, 1], got 0"),
        (["ratio=1.5"], "must lie in (0, 1], got 1.5"),
        (["model.path=/nowhere/LLaDA-V", "model.make_tiny=false"], "huggingface-cli download GSAI-ML/LLaDA-V"),
        (
            ["model=lavida_llada", "model.path=/nowhere"],
            "huggingface-cli download jacklishufan/lavida-llada-v1.0-instruct",
        ),
    ],
)
def test_bad_input_gives_a_message_not_a_traceback(tmp_path, overrides, message):
    result = run(f"hydra.run.dir={tmp_path / 'job'}", *overrides, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_paper_benchmark_without_local_data_says_how_to_fetch_it(tmp_path):
    result = run(f"hydra.run.dir={tmp_path / 'job'}", "task=docvqa_val", timeout=180)
    assert result.returncode == 2
    assert (
        "lmms-lab-encoder/DocVQA" in result.stderr and "huggingface-cli download --repo-type dataset" in result.stderr
    )
    assert not (tmp_path / "job" / "samples.jsonl").exists()


def test_a_job_that_raises_leaves_failed_json_and_no_metrics(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from redvtp_eval.harness import job
    from redvtp_eval.report.reproduce import CONFIG_DIR

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(job, "evaluate", out_of_memory)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["task=redvtp_toy_mcq", "limit=2", "wandb.mode=disabled"])
    with pytest.raises(RuntimeError):
        job.run_job(cfg, tmp_path / "job")
    failure = json.loads((tmp_path / "job" / job.FAILED).read_text())
    assert failure["error"] == "RuntimeError: CUDA out of memory"
    assert "out_of_memory" in failure["traceback"]
    assert not (tmp_path / "job" / "metrics.json").exists()


def test_a_lavida_job_runs_end_to_end(tmp_path):
    """The tiny LaViDa-LLaDA (random weights: its answers are noise) through the same job as LLaDA-V, with
    LaViDa's own tiling of the toy pages (counted here by the model itself)."""
    job = tmp_path / "job"
    result = run(f"hydra.run.dir={job}", "model=tiny_lavida_llada", f"model.path={tmp_path / 'tiny'}", "limit=2")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = lines(job / "samples.jsonl")
    from redvtp_eval.engine.families import FAMILIES
    from redvtp_eval.harness.offline_tasks import held_out

    model = FAMILIES["lavida_llada"].load(tmp_path / "tiny", dtype="float32")
    tokens = []
    for s in samples:
        (start, end), *_ = model.prepare("?", [held_out("redvtp_toy_docvqa", s["doc_id"]).image]).visual_spans
        tokens.append(end - start)
    assert [s["visual_tokens_before"] for s in samples] == tokens
    assert [(s["visual_tokens_after"], s["baseline"]["visual_tokens_after"]) for s in samples] == [
        (n // 2, n) for n in tokens
    ]
    config = (job / "config.yaml").read_text()
    assert "family: lavida_llada" in config and "step_ratio: 0.5" in config
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["samples"] == 2 and metrics["failed"] == 0


@pytest.mark.parametrize(
    ("pruner", "options", "kept"),
    [
        ("visionzip", [], 75),
        ("sparsevlm", [], 75),
        ("sparsevlm", ["pruner.layers=[1,3]", "pruner.ratios=[0.5]"], 75),
        ("divprune", [], 75),
        ("fastv", [], 75),
        ("llada_fastv", [], 75),
        ("dart", [], 75),
        ("pooling", [], 78),
        ("pdrop", [], 4),
        ("star", [], 75),
        ("transprune", [], 75),
        ("adaptinfer", [], 75),
    ],
)
def test_a_rival_pruner_job_runs_end_to_end(tmp_path, pruner, options, kept):
    """Held-out page 0 (192×192: a 12×12 base view and one tile of 12 rows of 12 plus a newline, 300 visual tokens)
    through the command line at r = 0.25: int(300 · 0.25) = 75 remain (VisionZip before the LM, with the tower
    attention the adapter asks the model for; SparseVLM after its last layer of step 1; FastV, LLaDA-FastV and DART
    after their layer of step 1). Pooling averages each 2-D grid 2×2 (stride round(1/√r)): 36 + 6 rows of 6 plus
    their newlines, 78. PDrop drops at each of its stages by r: 300 → 75 → 18 → 4. STAR (150 before the LM),
    TransPrune and AdaptInfer (progressive) end at int(N·r) too. Null options (``layers: null``)
    reach the pruner as its default, lists as lists."""
    assert toy_visual_tokens("redvtp_toy_docvqa", 0) == 300
    job = tmp_path / "job"
    result = run(f"hydra.run.dir={job}", f"pruner={pruner}", "ratio=0.25", "limit=1", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    (sample,) = lines(job / "samples.jsonl")
    assert sample["failed"] is None and sample["visual_tokens_before"] == 300 and sample["visual_tokens_after"] == kept
    assert kept <= sample["effective_visual_tokens"] < 300
    assert sample["baseline"]["visual_tokens_after"] == 300
    assert json.loads((job / "metrics.json").read_text())["failed"] == 0


def test_an_mme_limit_that_cuts_a_question_pair_is_refused_before_anything_loads(tmp_path):
    from hydra import compose, initialize_config_dir

    from redvtp_eval.harness import job
    from redvtp_eval.report.reproduce import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", f"model.path={tmp_path / 'tiny'}", "task=mme", "limit=3"])
    with pytest.raises(job.JobError, match="task mme is scored in groups of 2 rows: use a limit divisible by 2"):
        job.run_job(cfg, tmp_path / "job")
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "job").exists()
    job.check_limit(OmegaConf.merge(cfg, {"limit": 4}))


def test_offline_variables_are_set_before_huggingface_hub_reads_them():
    """huggingface_hub copies HF_HUB_OFFLINE into a constant at import: the package must set it first."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    for entry in ("redvtp_eval.__main__", "redvtp_eval.report.reproduce", "redvtp_eval.bench.__main__"):
        code = f"import {entry}, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == "True", entry
