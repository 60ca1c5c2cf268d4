"""The speed benchmark on the tiny size: what it runs and records, and the FLOP model against hand counts.

Wall-clock values are never asserted: only structure, token counts, run order and arithmetic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from redvtp_eval.bench.__main__ import CONFIG_DIR, run_bench
from redvtp_eval.bench.flops import generation_flops, probe_flops, step_flops, vision_flops
from redvtp_eval.bench.report import device_directory
from redvtp_eval.bench.runs import alternate
from redvtp_eval.bench.workload import architecture, make_workload, random_llada_v
from redvtp_eval.models.llada_v import LladaVConfig, build_network
from redvtp_eval.models.make_tiny import TINY_CONFIG
from redvtp_eval.pruners.base import kept_count

TINY = LladaVConfig.from_dict(TINY_CONFIG, "sdpa")
RATIOS = [1.0, 0.25, 0.1]
RUNS = 2


def test_step_flops_of_the_tiny_language_model_by_hand():
    # d=64, 4 heads of 16, 4 kv heads, m=128, 2 layers, V=512; L=100 positions, logits at G=8.
    flops = step_flops(TINY.text, length=100, logit_positions=8)
    assert flops["projections"] == 2 * (2 * 100 * 64 * (2 * 64 + 2 * 64)) == 6_553_600
    assert flops["attention"] == 2 * (4 * 100**2 * 64) == 5_120_000
    assert flops["mlp"] == 2 * (6 * 100 * 64 * 128) == 9_830_400
    assert flops["lm_head"] == 2 * 8 * 64 * 512 == 524_288
    assert flops["total"] == 22_028_288
    assert probe_flops(TINY.text, rows=10, length=100) == 2 * (2 * 10 * 100 * 64) == 256_000


def test_vision_flops_of_the_tiny_tower_by_hand():
    # c=32, m_v=64, 2 layers, 27² = 729 patches of 14², projector 32 → 64 → 64; 2 crops.
    embedding = 2 * 729 * 3 * 14**2 * 32
    layer = 8 * 729 * 32**2 + 4 * 729**2 * 32 + 4 * 729 * 32 * 64
    projector = 2 * 729 * (32 * 64 + 64 * 64)
    assert embedding + 2 * layer + projector == 196_328_448
    assert vision_flops(TINY, crops=2) == 2 * 196_328_448


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_flop_model_matches_the_networks_weights():
    """Matrix products cost 2 × weights × tokens; attention is what the weights do not count."""
    config = LladaVConfig.from_dict(architecture({"num_key_value_heads": 2, "vocab_size": 1000}, {}), "sdpa")
    network = build_network(config, torch.float32, torch.device("cpu"))
    length, logits = 50, 4
    step = step_flops(config.text, length, logits)
    assert step["projections"] + step["mlp"] == 2 * length * _weights(network.model.layers)
    assert step["lm_head"] == 2 * logits * _weights(network.lm_head)
    tower = network.model.vision_tower.vision_tower["vision_model"]
    patches, c, layers = 729, config.vision.hidden_size, config.vision.num_hidden_layers
    linear = _weights(tower.embeddings) + _weights(tower.encoder) + _weights(network.model.mm_projector)
    assert vision_flops(config, crops=3) == 3 * (2 * patches * linear + layers * 4 * patches**2 * c)


def test_generation_flops_pay_the_vision_encoder_and_the_first_step_in_full():
    steps = dict(crops=2, steps=4, logit_positions=8)
    vision = vision_flops(TINY, 2)
    full, short = step_flops(TINY.text, 100, 8)["total"], step_flops(TINY.text, 40, 8)["total"]
    assert generation_flops(TINY, length=100, length_after=100, **steps) == vision + 4 * full
    pruned = generation_flops(TINY, length=100, length_after=40, probe_rows=10, **steps)
    assert pruned == vision + full + 3 * short + probe_flops(TINY.text, 10, 100)
    later = generation_flops(TINY, length=100, length_after=40, prune_after_step=2, **steps)
    assert later == vision + 2 * full + 2 * short


def test_alternate_rotates_the_order_and_records_only_measured_rounds():
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or {"call": len(calls)}) for name in ("a", "b", "c")}
    results, order = alternate(variants, warmup=1, runs=3)
    assert calls == ["c", "a", "b", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert order == calls[3:]
    assert [r["call"] for r in results["a"]] == [4, 9, 11]


def test_the_docvqa_shape_is_a_3657_token_page_in_31_crops():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        shape = compose("bench").bench_shape
    model = random_llada_v(architecture({}, {}), torch.float32, torch.device("cpu"), "sdpa", seed=0)
    workload = make_workload(model, dict(shape), seed=0)
    prompt = workload.prompt()
    assert workload.crops == 31
    assert prompt.visual_tokens == 3657
    assert len(prompt.embeds) == 47 + 3657 + 30
    assert (workload.settings.gen_length, workload.settings.steps, workload.settings.block_length) == (32, 16, 32)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    overrides = [
        "model=tiny",
        "bench_size=tiny",
        "bench_shape=mcq",
        "bench_shape.image_size=[384,384]",
        f"ratios=[{','.join(map(str, RATIOS))}]",
        f"runs={RUNS}",
        "warmup=1",
        "profile=true",
        f"results_dir={out}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    report, path = run_bench(cfg, "test")
    return report, path


def test_report_is_written_as_json_and_markdown_per_device(tiny_report):
    report, path = tiny_report
    assert (
        path.name == "mcq_tiny_redvtp.json"
        and path.parent.name == device_directory("", report["environment"]["device"]).name
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert {"command", "config", "environment", "load_average", "architecture", "shape", "flops", "speed"} <= set(
        report
    )
    assert {"device", "libraries", "commit"} <= set(report["environment"])
    table = path.with_suffix(".md").read_text()
    for ratio in RATIOS:
        assert f"| {ratio:g} | 1485 → {kept_count(1485, ratio)} |" in table


def test_profile_tables_of_one_unpruned_and_one_pruned_run(tiny_report):
    _, path = tiny_report
    text = path.with_name("mcq_tiny_redvtp_profile.txt").read_text()
    assert "## unpruned (redvtp, ratio 0.25)" in text and "## pruned (redvtp, ratio 0.25)" in text
    assert "scaled_dot_product" in text


def test_token_counts_and_sequence_lengths_follow_the_ratio(tiny_report):
    report, _ = tiny_report
    prompt = 47 + 1485 + 60
    assert report["shape"]["visual_tokens"] == 1485 and report["shape"]["crops"] == 2
    assert report["shape"]["sequence_length"] == prompt + 2
    assert [row["ratio"] for row in report["speed"]] == RATIOS
    for row in report["speed"]:
        kept = kept_count(1485, row["ratio"])
        assert row["visual_tokens"] == [1485, kept]
        assert row["sequence_length"] == [prompt + 2, prompt + 2 - 1485 + kept]
        for run in row["pruned"]["runs"]:
            assert (run["visual_tokens_before"], run["visual_tokens_after"], run["prompt_tokens"]) == (
                1485,
                kept,
                prompt,
            )
            assert run["steps"] == len(run["step_s"]) == 2
        for run in row["baseline"]["runs"]:
            assert run["visual_tokens_after"] == 1485 and run["sequence_length_after"] == prompt + 2


def test_baseline_and_pruned_alternate_with_every_list_kept(tiny_report):
    report, _ = tiny_report
    for row in report["speed"]:
        assert row["order"] == ["baseline", "pruned", "pruned", "baseline"]
        for side in ("baseline", "pruned"):
            assert len(row[side]["runs"]) == RUNS
            for timing in ("latency_s", "vision_s", "first_step_s", "scoring_step_s", "after_prune_step_s"):
                assert len(row[side][timing]["raw"]) == RUNS
                assert {"p50", "p90", "mean"} <= set(row[side][timing])
            assert row[side]["tokens_per_s_gen_length"] is not None
            assert row[side]["tokens_per_s_answer"] is not None


def test_ideal_speedup_is_the_flop_models(tiny_report):
    report, _ = tiny_report
    config = LladaVConfig.from_dict(report["architecture"], "sdpa")
    common = dict(crops=2, steps=2, logit_positions=2)
    for row in report["speed"]:
        before, after = row["sequence_length"]
        baseline = generation_flops(config, length=before, length_after=before, **common)
        pruned = generation_flops(config, length=before, length_after=after, probe_rows=before - 1485, **common)
        assert row["ideal"]["speedup"] == pytest.approx(baseline / pruned)
        assert row["achieved_over_ideal"] == pytest.approx(row["speedup_p50"] / row["ideal"]["speedup"])


def test_scoring_step_is_compared_with_the_official_way(tiny_report):
    report, _ = tiny_report
    scoring = report["scoring"]
    assert scoring["sequence_length"] == report["shape"]["sequence_length"]
    assert set(scoring["steps"]) == {"plain", "probed", "official"}
    assert all(len(step["seconds"]["raw"]) == RUNS for step in scoring["steps"].values())
    assert scoring["order"] == ["plain", "probed", "official", "probed", "official", "plain"]
    plain = scoring["steps"]["plain"]["seconds"]["p50"]
    assert scoring["probed_overhead_p50"] == pytest.approx(scoring["steps"]["probed"]["seconds"]["p50"] / plain - 1)


def test_the_unpruned_pruner_is_refused_with_a_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "redvtp_eval.bench", "model=tiny", "bench_size=tiny", "pruner=none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: the benchmark compares a pruner with the unpruned model" in result.stderr
