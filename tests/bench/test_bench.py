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
from redvtp_eval.bench.report import device_directory
from redvtp_eval.bench.runs import alternate
from redvtp_eval.bench.workload import architecture, generation_settings, make_workload, random_model, replayed_steps
from redvtp_eval.engine.flops import (
    Roofline,
    at_depth,
    denoising_step_flops,
    forward_bytes,
    generation_flops,
    prefill_flops,
    probe_flops,
    step_bytes,
    step_flops,
    vision_bytes,
    vision_flops,
)
from redvtp_eval.engine.sampler import ForwardShape, GenerationRecord
from redvtp_eval.models.lavida import Lavida
from redvtp_eval.models.llada_v import LladaVConfig, build_network
from redvtp_eval.models.make_tiny import TINY as TINY_FAMILIES
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


def test_a_cached_step_runs_the_response_rows_against_prompt_and_response_keys_by_hand():
    # G=8 response rows against K=100 keys (92 cached prompt positions + 8), logits at the 8 rows.
    flops = denoising_step_flops(TINY.text, length=100, gen_length=8, prefix_cache=True)
    assert flops["projections"] == 2 * (2 * 8 * 64 * (2 * 64 + 2 * 64)) == 524_288
    assert flops["attention"] == 2 * (4 * 8 * 100 * 64) == 409_600
    assert flops["mlp"] == 2 * (6 * 8 * 64 * 128) == 786_432
    assert flops["lm_head"] == 2 * 8 * 64 * 512 == 524_288
    assert flops["total"] == 2_244_608
    assert denoising_step_flops(TINY.text, length=100, gen_length=8, prefix_cache=False)["total"] == 22_028_288
    # The prefill: the 92 prompt positions among themselves, logits at the last one.
    prefill = 2 * (2 * 92 * 64 * 256) + 2 * (4 * 92**2 * 64) + 2 * (6 * 92 * 64 * 128) + 2 * 1 * 64 * 512
    assert prefill == prefill_flops(TINY.text, 92) == 19_472_384


def test_step_bytes_of_the_tiny_language_model_by_hand():
    # d=64, d_kv=64, m=128, 2 layers, V=512, half precision (w=2); 100 keys per layer, logits at G=8.
    moved = step_bytes(TINY.text, logit_positions=8, keys=100, weight_bytes=2)
    assert moved["weights"] == 2 * (2 * (64 * 256 + 3 * 64 * 128) + 64 * 512) == 2 * 114_688 == 229_376
    assert moved["keys_values"] == 2 * (2 * 2 * 100 * 64) == 51_200
    # head output 2, its float32 copy 2 + 4, argmax 4, float64 copy 4 + 8, float64 softmax 8 + 8: 40 per entry
    assert moved["vocabulary"] == 8 * 512 * 40 == 163_840
    assert moved["total"] == 444_416
    assert step_bytes(TINY.text, 8, 100, weight_bytes=4)["vocabulary"] == 8 * 512 * 36  # float32: no copy
    # a recorded forward with the same shape moves the same
    assert forward_bytes(TINY.text, [(100, 100, 50)] * 2, 8, weight_bytes=2) == 444_416
    # the tower: patch embedding 3·14²·32, per layer 4·32² + 2·32·64, the projector 32·64 + 64²
    assert vision_bytes(TINY, weight_bytes=2) == 2 * (3 * 196 * 32 + 2 * (4 * 1024 + 4096) + 2048 + 4096)


def test_the_roofline_adds_compute_time_and_memory_time():
    roofline = Roofline(flops_per_s=1e12, bytes_per_s=1e9)
    assert roofline.seconds(2e12, 3e9) == pytest.approx(2 + 3)


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
    config = LladaVConfig.from_dict(architecture("llada_v", {"num_key_value_heads": 2, "vocab_size": 1000}, {}), "sdpa")
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


def test_generation_flops_with_the_prefix_cache_pay_the_prefill_then_shorten_only_the_keys():
    steps = dict(crops=2, steps=4, logit_positions=8, prefix_cache=True)
    vision, prefill = vision_flops(TINY, 2), prefill_flops(TINY.text, 92)
    full = denoising_step_flops(TINY.text, 100, 8, prefix_cache=True)
    short = denoising_step_flops(TINY.text, 40, 8, prefix_cache=True)
    assert full["total"] - short["total"] == full["attention"] - short["attention"] == 2 * 4 * 8 * 60 * 64
    assert generation_flops(TINY, length=100, length_after=100, **steps) == vision + prefill + 4 * full["total"]
    pruned = generation_flops(TINY, length=100, length_after=40, probe_rows=8, **steps)
    assert pruned == vision + prefill + full["total"] + 3 * short["total"] + probe_flops(TINY.text, 8, 100)


def test_alternate_rotates_the_order_and_records_only_measured_rounds():
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or {"call": len(calls)}) for name in ("a", "b", "c")}
    results, order = alternate(variants, warmup=1, runs=3)
    assert calls == ["c", "a", "b", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert order == calls[3:]
    assert [r["call"] for r in results["a"]] == [4, 9, 11]


def _shape(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("bench", overrides=[f"bench_shape={name}"]).bench_shape


def test_the_docvqa_shape_is_a_3657_token_page_in_31_crops():
    shape = _shape("docvqa")
    model = random_model("llada_v", architecture("llada_v", {}, {}), torch.float32, torch.device("cpu"), "sdpa", 0)
    settings = generation_settings("llada_v", shape, prefix_cache=False)
    workload = make_workload(model, shape, settings, seed=0)
    prompt = workload.prompt()
    assert workload.crops == 31
    assert prompt.visual_tokens == 3657
    assert len(prompt.embeds) == 47 + 3657 + 30
    assert (settings.gen_length, settings.steps, settings.block_length, settings.stop_strings) == (32, 16, 32, ())


def test_the_docvqa_shape_for_lavida_is_an_840_token_page_in_5_pooled_crops():
    shape = _shape("docvqa")
    raw = architecture("lavida_llada", {}, {})
    model = random_model("lavida_llada", raw, torch.float32, torch.device("cpu"), "sdpa", seed=0)
    assert isinstance(model, Lavida) and model.family.name == "LaViDa-LLaDA"
    settings = generation_settings("lavida_llada", shape, prefix_cache=False)
    workload = make_workload(model, shape, settings, seed=0)
    assert workload.crops == 5
    assert workload.prompt().visual_tokens == 840
    # LaViDa's docvqa_val settings through its parser: 32 tokens, step_ratio 0.5 → 16 steps, one block.
    assert (settings.gen_length, settings.steps, settings.block_length, settings.schedule) == (32, 16, 32, "uniform")
    assert not settings.prefix_cache and generation_settings("lavida_llada", shape, prefix_cache=True).prefix_cache
    with pytest.raises(ValueError, match="llada_v family has no prefix-KV cache"):
        generation_settings("llada_v", shape, prefix_cache=True)


def test_sizes_are_written_under_the_familys_own_config_fields():
    """LaViDa-LLaDA's config.json spells the dimensions the OLMo way; its reader must see the size's values."""
    dims = {"hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 3}
    dims |= {"num_key_value_heads": 1, "vocab_size": 700}
    raw = architecture("lavida_llada", dims, None)
    assert (raw["d_model"], raw["n_layers"], raw["n_kv_heads"], raw["embedding_size"]) == (96, 3, 1, 700)
    config = TINY_FAMILIES["lavida_llada"].network_config(raw, "sdpa")
    assert {name: getattr(config.text, name) for name in dims} == dims
    assert config.vision.num_hidden_layers == 26 and config.mm_hidden_size == 1152
    assert config.crop_pool_stride == 2


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
        path.name == "llada_v_mcq_tiny_redvtp.json"
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
    text = path.with_name("llada_v_mcq_tiny_redvtp_profile.txt").read_text()
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
            # Without the cache every step forwards the whole (pruned after step 1) sequence.
            after = prompt + 2 - 1485 + kept
            assert run["step_forward"] == [[prompt + 2, prompt + 2], [after, after]]
        for run in row["baseline"]["runs"]:
            assert run["visual_tokens_after"] == 1485 and run["sequence_length_after"] == prompt + 2
            assert run["step_forward"] == [[prompt + 2, prompt + 2]] * 2


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
    # 2 tokens in 2 steps: the LM head runs on the 2 masked positions, then on the 1 left (1.5 a step)
    common = dict(crops=2, steps=2, logit_positions=2, head_positions=1.5)
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


LAVIDA_PROMPT = 47 + 840 + 30
LAVIDA_RATIOS = [1.0, 0.25]


@pytest.fixture(scope="module")
def cached_lavida_report(tmp_path_factory):
    """Tiny LaViDa-LLaDA on the DocVQA page (840 visual tokens, 32 tokens in 16 steps) with the prefix cache."""
    overrides = [
        "model=tiny_lavida_llada",
        "bench_size=tiny",
        "prefix_cache=true",
        f"ratios=[{','.join(map(str, LAVIDA_RATIOS))}]",
        "runs=1",
        "warmup=0",
        f"results_dir={tmp_path_factory.mktemp('bench')}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    return run_bench(cfg, "test")


def test_cached_lavida_report_names_the_family_and_the_cache(cached_lavida_report):
    report, path = cached_lavida_report
    assert path.name == "lavida_llada_docvqa_tiny_redvtp_prefix_cache.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert report["config"]["model"]["family"] == "lavida_llada" and report["config"]["prefix_cache"] is True
    assert report["shape"]["prefix_cache"] is True and report["shape"]["visual_tokens"] == 840
    assert (report["shape"]["gen_length"], report["shape"]["steps"], report["shape"]["crops"]) == (32, 16, 5)
    assert report["flops"]["prefill"] == prefill_flops(
        TINY_FAMILIES["lavida_llada"].network_config(report["architecture"], "sdpa").text, LAVIDA_PROMPT
    )
    assert report["scoring"] is None  # the official way has no cache: nothing to compare the cached step with
    assert "prefix-KV cache" in path.with_suffix(".md").read_text()


def test_cached_runs_forward_only_the_response_after_the_prefill(cached_lavida_report):
    report, _ = cached_lavida_report
    length = LAVIDA_PROMPT + 32
    for row in report["speed"]:
        kept = kept_count(840, row["ratio"])
        assert row["visual_tokens"] == [840, kept]
        assert row["sequence_length"] == [length, length - 840 + kept]
        (pruned,) = row["pruned"]["runs"]
        (baseline,) = row["baseline"]["runs"]
        assert pruned["steps"] == baseline["steps"] == 16
        assert pruned["step_forward"] == [[32, length]] + [[32, length - 840 + kept]] * 15
        assert baseline["step_forward"] == [[32, length]] * 16
        assert pruned["prompt_tokens"] == baseline["prompt_tokens"] == LAVIDA_PROMPT
        assert len(row["pruned"]["prefill_s"]["raw"]) == 1


def test_cached_ideal_speedup_is_the_flop_models_with_the_prefill(cached_lavida_report):
    report, _ = cached_lavida_report
    config = TINY_FAMILIES["lavida_llada"].network_config(report["architecture"], "sdpa")
    # 32 tokens in 16 steps, 2 a step: the LM head runs on 32, 30, …, 2 masked positions, 17 a step
    common = dict(crops=5, steps=16, logit_positions=32, prefix_cache=True, head_positions=17)
    for row in report["speed"]:
        before, after = row["sequence_length"]
        baseline = generation_flops(config, length=before, length_after=before, **common)
        pruned = generation_flops(config, length=before, length_after=after, probe_rows=32, **common)
        assert row["ideal"]["speedup"] == pytest.approx(baseline / pruned)
        step = denoising_step_flops(config.text, before, 32, True, head_positions=17)["total"]
        assert row["ideal"]["step_speedup"] == pytest.approx(
            step / denoising_step_flops(config.text, after, 32, True, head_positions=17)["total"]
        )


def test_the_unpruned_pruner_is_refused_with_a_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "redvtp_eval.bench", "model=tiny", "bench_size=tiny", "pruner=none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: the benchmark compares a pruner with the unpruned model" in result.stderr


def test_the_roofline_bound_is_the_recorded_runs_time_ratio_and_lower_than_the_flop_bound(tiny_report):
    """The roofline also counts weights and vocabulary work, which pruning does not shorten."""
    report, _ = tiny_report
    for row in report["speed"]:
        base, pruned = row["baseline"]["roofline_s"], row["pruned"]["roofline_s"]
        assert row["roofline_speedup"] == base / pruned
        assert row["achieved_over_roofline"] == row["speedup_p50"] / row["roofline_speedup"]
        if row["ratio"] < 1:
            assert 1 < row["roofline_speedup"] < row["ideal"]["speedup"]


def test_the_long_answer_shape_is_256_tokens_in_blocks_of_32():
    settings = generation_settings("llada_v", _shape("docvqa_long"), False, fast_dllm="dual")
    assert (settings.gen_length, settings.steps, settings.block_length, settings.fast_dllm) == (256, 128, 32, "dual")
    with pytest.raises(ValueError, match="no fast_dllm / threshold; run them on llada_v"):
        generation_settings("lavida_dream", _shape("docvqa_long"), False, fast_dllm="dual")


def test_a_fast_dllm_bench_refreshes_each_block_and_bounds_by_its_recorded_forwards(tmp_path):
    overrides = [
        "model=tiny",
        "bench_size=tiny",
        "bench_shape=docvqa_long",
        "bench_shape.image_size=[384,384]",
        "bench_shape.task.generation.llada_v.gen_length=64",
        "bench_shape.task.generation.llada_v.steps=8",
        "fast_dllm=dual",
        "ratios=[0.25]",
        "runs=1",
        "warmup=0",
        f"results_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        report, path = run_bench(compose("bench", overrides=overrides), "test")
    assert path.name == "llada_v_docvqa_long_tiny_redvtp_fast_dual.json" and report["scoring"] is None
    row = report["speed"][0]
    # two blocks of 32 in 4 steps each: a full forward at each block's start, then the block alone (dual)
    rows = [forward[0] for forward in row["pruned"]["runs"][0]["step_forward"]]
    length = row["sequence_length"][1]
    assert rows == [row["sequence_length"][0], 32, 32, 32, length, 32, 32, 32]
    base, pruned = row["baseline"], row["pruned"]
    assert row["ideal"]["speedup"] == base["flops_total"] / pruned["flops_total"] > 1


def test_a_workload_replays_each_sides_step_counts_of_a_finished_job(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"steps": 1, "failed": None, "baseline": {"steps": 2}},
        {"steps": 9, "failed": "OOM", "baseline": {"steps": 9}},
        {"steps": 2, "failed": None, "baseline": {"steps": 3}},
    ]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert replayed_steps(samples) == {"baseline": [2, 3], "pruned": [1, 2]}
    overrides = [
        "model=tiny",
        "bench_size=tiny",
        "bench_shape=mcq",
        "bench_shape.image_size=[384,384]",
        "bench_shape.task.generation.llada_v.gen_length=4",
        "bench_shape.task.generation.llada_v.block_length=4",
        "bench_shape.task.generation.llada_v.steps=4",
        "ratios=[0.5]",
        "runs=3",
        "warmup=1",
        "scoring=false",
        f"workload={samples}",
        f"results_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        report, path = run_bench(compose("bench", overrides=overrides), "test")
    assert path.name == "llada_v_mcq_tiny_redvtp_replay.json"
    row = report["speed"][0]
    # the warm-up round takes the first count of each side, the three measured rounds the next ones, cycling
    assert [run["steps"] for run in row["baseline"]["runs"]] == [3, 2, 3]
    assert [run["steps"] for run in row["pruned"]["runs"]] == [2, 1, 2]
    flops = [run["flops"]["total"] for run in row["baseline"]["runs"]]
    assert row["baseline"]["flops_total"] == pytest.approx(sum(flops) / 3) and flops[0] > flops[1]
    assert row["ideal"]["speedup"] == row["baseline"]["flops_total"] / row["pruned"]["flops_total"]
    assert "replays the step count" in path.with_suffix(".md").read_text()


def test_a_workload_from_an_unpaired_job_is_refused_with_what_to_do(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"steps": 2, "failed": None}) + "\n")
    with pytest.raises(ValueError, match="unpaired job .* replay a paired job"):
        replayed_steps(samples)
    with pytest.raises(ValueError, match="not a file"):
        replayed_steps(tmp_path / "missing.jsonl")


def _cpu_forward(rows: int, keys: int, logits: int, probe_rows: int = 0) -> int:
    """One forward at the cpu size by hand: d=128, one layer of one 128-dim head (d_kv=128), m=384, V=126464."""
    projections = 2 * rows * 128 * (2 * 128 + 2 * 128)
    attention = 4 * rows * keys * 128 + 2 * probe_rows * keys * 128
    return projections + attention + 6 * rows * 128 * 384 + 2 * logits * 128 * 126464


# the cpu size's tower on 2 crops of 27² = 729 patches: width 32, MLP 64, one layer; projector 32 → 128 → 128
CPU_VISION = 2 * (
    2 * 729 * 3 * 14**2 * 32
    + (8 * 729 * 32**2 + 4 * 729**2 * 32 + 4 * 729 * 32 * 64)
    + 2 * 729 * (32 * 128 + 128 * 128)
)


@pytest.fixture(scope="module")
def projected_report(tmp_path_factory):
    """The tiny model (2 layers of d 64) on a small multiple-choice page, its forwards projected to the cpu size."""
    overrides = [
        "model=tiny",
        "bench_size=tiny",
        "bench_shape=mcq",
        "bench_shape.image_size=[384,384]",
        "ratios=[1.0,0.25]",
        "runs=1",
        "warmup=0",
        "scoring=false",
        "project=cpu",
        f"results_dir={tmp_path_factory.mktemp('bench')}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return run_bench(compose("bench", overrides=overrides), "test")


def test_the_projection_is_the_flop_model_at_the_other_size_on_the_recorded_forwards_by_hand(projected_report):
    report, path = projected_report
    assert report["projection"]["size"] == "cpu" and report["projection"]["vision_flops"] == CPU_VISION
    length = 47 + 1485 + 60 + 2
    # unpruned: 2 steps over the whole sequence, the LM head on the 2 masked positions, then on the 1 left
    baseline = CPU_VISION + _cpu_forward(length, length, 2) + _cpu_forward(length, length, 1)
    # RedVTP r = 0.25: step 1 probes the 109 non-visual rows, step 2 runs on 109 + 371 kept positions
    after = length - 1485 + kept_count(1485, 0.25)
    pruned = CPU_VISION + _cpu_forward(length, length, 2, probe_rows=109) + _cpu_forward(after, after, 1)
    unpruned_row, pruned_row = report["speed"]
    assert unpruned_row["projected"]["generation_flops_baseline"] == baseline
    assert pruned_row["projected"]["generation_flops_baseline"] == baseline
    assert pruned_row["projected"]["generation_flops_pruned"] == pruned
    assert pruned_row["projected"]["speedup"] == baseline / pruned
    assert pruned_row["pruned"]["runs"][0]["projected"]["flops_total"] == pruned
    # the run's own-size bound is another number: the tiny size (d 64, 2 layers) weighs attention differently
    assert pruned_row["ideal"]["speedup"] != pytest.approx(pruned_row["projected"]["speedup"], rel=1e-3)
    roofline = pruned_row["projected"]
    assert roofline["roofline_speedup"] == roofline["roofline_s_baseline"] / roofline["roofline_s_pruned"]
    assert 1 < roofline["roofline_speedup"] < roofline["speedup"]
    assert "## Projected to the `cpu` size" in path.with_suffix(".md").read_text()


def test_at_depth_carries_uniform_layers_and_refuses_layers_of_different_shapes():
    record = GenerationRecord(prompt_tokens=10, visual_tokens_before=6, visual_tokens_after=6, crops=1)
    record.forwards = [ForwardShape("step", [(12, 12, 6)] * 2, 2, [4, 4])]
    (carried,) = at_depth(record, 5).forwards
    assert carried.layers == [(12, 12, 6)] * 5 and carried.probed == [4] * 5 and carried.logits == 2
    assert record.forwards[0].layers == [(12, 12, 6)] * 2 and at_depth(record, 5).crops == 1
    record.forwards = [ForwardShape("step", [(12, 12, 6), (12, 9, 3)], 2, [0, 0])]
    with pytest.raises(ValueError, match="layers of different shapes"):
        at_depth(record, 32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pruner=llada_fastv", "project=full"], "'llada_fastv' acts inside the language model .* drop project="),
        (["project=huge"], "project=huge is not a bench size: choose one of cpu, full, tiny"),
    ],
)
def test_a_projection_is_refused_for_a_pruner_inside_the_lm_and_an_unknown_size(tmp_path, overrides, message):
    base = ["model=tiny", "bench_size=tiny", "bench_shape=mcq", "bench_shape.image_size=[384,384]", "ratios=[0.25]"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=[*base, "runs=1", "warmup=0", f"results_dir={tmp_path}", *overrides])
    with pytest.raises(ValueError, match=message):
        run_bench(cfg, "test")
    assert not list(tmp_path.rglob("*.json"))  # refused before any run
