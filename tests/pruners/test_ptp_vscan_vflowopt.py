"""PTP, VScan and VFlowOpt (tower attention and AnyRes grids before the LM; VScan and VFlowOpt inside it too): naive
references, kept counts per stage, merged values, keep-all equals unpruned, bad options, VFlowOpt's search and one
job through the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import page
from test_rivals import SETTINGS, Capture

from redvtp_eval.analysis.vflowopt_search import candidates, flow_similarity, main
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import grid_coordinates, kept_count, proportional_counts, received_attention
from redvtp_eval.pruners.ptp import ptp_keep
from redvtp_eval.pruners.vflowopt import cell_ids, recycle
from redvtp_eval.pruners.vscan import vscan_reduce

QUESTION = "What is the total?"


def prepared(model, images, pruner):
    think = "no_think" if model.__class__.__name__ == "LladaV" else None
    return model.prepare(QUESTION, images, think, tower_layer=pruner.tower_attention_layer())


@pytest.fixture(scope="module")
def wide(deep):
    """One AnyRes image (base view 27×27 and a 13×27 tile map with its newline column) with tower attention."""
    return deep.prepare(QUESTION, [page((384, 192))], "no_think", tower_layer=-1)


def image_of(prompt):
    ((start, end),) = prompt.visual_spans
    return prompt.embeds[start:end], prompt.tower_attention[0], prompt.visual_grids[0], start


KEEP_ALL = [("ptp", {}), ("vscan", {}), ("vscan", {"queries": "masked"}), ("vflowopt", {})]


@pytest.mark.parametrize(("name", "options"), KEEP_ALL)
def test_keeping_every_token_reproduces_the_unpruned_tokens(deep, wide, name, options):
    unpruned = generate(deep, wide, SETTINGS)
    result = generate(deep, wide, SETTINGS, make_pruner(name, ratio=1.0, **options))
    assert result.token_ids == unpruned.token_ids
    assert result.record.effective_visual_tokens == wide.visual_tokens


def test_grid_coordinates_and_proportional_counts_equal_naive_loops():
    grids = [(0, 3, 3, 3), (9, 2, 4, 5)]
    coordinates = grid_coordinates(grids, 19, torch.device("cpu"))
    expected = [[-1, -1, -1]] * 19
    for g, (first, rows, cols, stride) in enumerate(grids):
        for r in range(rows):
            for c in range(cols):
                expected[first + r * stride + c] = [g, r, c]
    assert coordinates.tolist() == expected
    torch.manual_seed(5)
    weights, caps = torch.rand(7), torch.tensor([3, 1, 8, 2, 0, 5, 4])
    for total in (0, 5, 11, 23, 40):
        counts = proportional_counts(total, weights, caps)
        assert int(counts.sum()) == min(total, int(caps.sum())) and (counts <= caps).all()
        # naive water-filling: raise a common level until the capped shares add up to the total
        lo, hi = 0.0, 1e6
        for _ in range(200):
            level = (lo + hi) / 2
            lo, hi = (
                (level, hi)
                if sum(min(float(c), level * float(w)) for w, c in zip(weights, caps)) < total
                else (lo, level)
            )
        ideal = [min(float(c), hi * float(w)) for w, c in zip(weights, caps)]
        assert all(abs(int(n) - share) < 1 + 1e-9 for n, share in zip(counts, ideal))
    assert proportional_counts(4, torch.zeros(3), torch.tensor([2, 2, 4])).tolist() == [1, 1, 2]


# PTP.


def naive_ptp(features, scores, text, grids, budget, weight):
    """Loops over tokens: regions, relevance, base-view saliency per region, water-filled budgets, top per region."""
    n, d = features.shape
    relevance = [0.0] * n
    for u in range(len(text)):
        logits = [float(features[j] @ text[u]) / math.sqrt(d) for j in range(n)]
        top = max(logits)
        total = sum(math.exp(x - top) for x in logits)
        for j in range(n):
            relevance[j] += math.exp(logits[j] - top) / total / len(text)
    (b_first, side, b_cols, b_stride), (t_first, rows, cols, stride) = grids
    region = [-1] * n
    for r in range(side):
        for c in range(b_cols):
            region[b_first + r * b_stride + c] = 0
    across = math.ceil(cols / side)
    for r in range(rows):
        for c in range(cols):
            region[t_first + r * stride + c] = 1 + (r // side) * across + c // side
    count = 1 + math.ceil(rows / side) * across
    sizes = [region.count(g) for g in range(count)]
    bottom = [0.0] * count
    for r in range(side):
        for c in range(b_cols):
            y, x = int((r + 0.5) * rows / side), int((c + 0.5) * cols / b_cols)
            bottom[1 + (y // side) * across + x // side] += float(scores[b_first + r * b_stride + c])
    top_down = [0.0] * count
    for j in range(n):
        if region[j] > 0:
            top_down[region[j]] += relevance[j]
    b_sum, t_sum = sum(bottom[1:]), sum(top_down[1:])
    base = sizes[0] / sum(sizes)
    weights = [base] + [
        (1 - base) * ((1 - weight) * bottom[g] / b_sum + weight * top_down[g] / t_sum) for g in range(1, count)
    ]
    budgets = proportional_counts(budget, torch.tensor(weights), torch.tensor(sizes)).tolist()
    kept = []
    for g in range(count):
        members = [j for j in range(n) if region[j] == g]
        s_sum = sum(float(scores[j]) for j in members)
        r_sum = sum(relevance[j] for j in members)
        combined = {j: (1 - weight) * float(scores[j]) / s_sum + weight * relevance[j] / r_sum for j in members}
        kept += sorted(members, key=lambda j: -combined[j])[: budgets[g]]
    return sorted(kept), budgets


def test_ptp_equals_a_naive_loop_on_an_anyres_image(wide):
    features, scores, grids, start = image_of(wide)
    text = wide.embeds[[i for i in range(len(wide.embeds)) if not start <= i < start + len(features)]]
    budget = kept_count(len(features), 0.25)
    expected, budgets = naive_ptp(features, scores, text, grids, budget, 0.5)
    assert ptp_keep(features, scores, text, grids, budget, 0.5).tolist() == expected
    assert len(expected) == budget and len(set(budgets)) > 1  # the tile regions are not given equal shares


def test_ptp_through_the_sampler_keeps_the_rule_count_per_image(deep):
    pruner = make_pruner("ptp", ratio=0.25)
    prompt = prepared(deep, [page(), page((300, 200), color="gray")], pruner)
    record = generate(deep, prompt, SETTINGS, pruner).record
    sizes = [end - start for start, end in prompt.visual_spans]
    assert [len(kept) for kept in record.kept_visual] == [kept_count(size, 0.25) for size in sizes]
    assert record.pruned_at == ["before_lm"]
    with pytest.raises(ValueError, match="instruction_weight"):
        make_pruner("ptp", instruction_weight=1.5)


# VScan.


def naive_vscan(features, scores, grids, budget, windows):
    n = len(features)
    sizes = [rows * cols for _, rows, cols, _ in grids]
    budgets = proportional_counts(budget, torch.tensor(sizes, dtype=torch.float64), torch.tensor(sizes)).tolist()
    window = math.ceil(grids[0][1] / windows)
    values = {}
    for (first, rows, cols, stride), k in zip(grids, budgets):
        cells = {}
        for r in range(rows):
            for c in range(cols):
                cells.setdefault((r // window, c // window), []).append(first + r * stride + c)
        quota = (k // 2) // len(cells)
        chosen = []
        for members in cells.values():
            chosen += sorted(members, key=lambda j: -float(scores[j]))[:quota]
        tokens = [j for members in cells.values() for j in members]
        rest = sorted((j for j in tokens if j not in chosen), key=lambda j: -float(scores[j]))
        chosen += rest[: k - len(chosen)]
        groups = {j: [j] for j in chosen}
        for j in tokens:
            if j not in groups:
                cos = [float(F.cosine_similarity(features[j], features[t], dim=0)) for t in chosen]
                groups[chosen[cos.index(max(cos))]].append(j)
        for t, members in groups.items():
            values[t] = sum(features[j] for j in members) / len(members)
    kept = sorted(values)
    return kept, torch.stack([values[j] for j in kept]), n


def test_vscan_scans_and_merges_as_a_naive_loop(wide):
    features, scores, grids, _ = image_of(wide)
    budget = kept_count(len(features), 0.25 * 3)
    kept, values = vscan_reduce(features, scores, grids, budget, 4)
    expected_kept, expected_values, _ = naive_vscan(features, scores, grids, budget, 4)
    assert kept.tolist() == expected_kept and len(kept) == budget
    torch.testing.assert_close(values, expected_values, atol=1e-5, rtol=0)


def test_vscan_keeps_ratio_over_lm_ratio_before_the_lm_then_ratio_after_the_middle_layer(deep, wide):
    pruner = make_pruner("vscan", ratio=0.25)
    capture = Capture(pruner)
    n = wide.visual_tokens
    record = generate(deep, wide, SETTINGS, pruner).record
    encoder, final = kept_count(n, 0.75), kept_count(n, 0.25)
    for forward in record.forwards:
        assert [visual for _, _, visual in forward.layers] == [encoder, encoder, final, final]
    assert record.pruned_at == ["before_lm", "step1/layer2"]
    ((context, kept),) = capture.seen
    (scores,) = received_attention(context, "last_prompt")
    assert kept[0].tolist() == torch.topk(scores, final).indices.sort().values.tolist()
    assert make_pruner("vscan", ratio=0.25, lm_ratio=1.0).lm_layers(4) == ()
    with pytest.raises(ValueError, match="windows"):
        make_pruner("vscan", windows=0)
    with pytest.raises(ValueError, match="queries 'last'"):
        make_pruner("vscan", queries="last")


def test_vscan_on_lavida_with_the_prefix_cache(lavida_models):
    model = lavida_models["lavida_llada"][0]
    pruner = make_pruner("vscan", ratio=0.25, queries="masked")
    prompt = prepared(model, [page((384, 192))], pruner)
    cached = GenerationSettings(8, 4, 8, stop_strings=(), prefix_cache=True)
    record = generate(model, prompt, cached, pruner).record
    assert record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)


# VFlowOpt.


def naive_recycle(features, scores, cells, budget):
    """The smallest g whose pool (all but the top budget − g) spans g cells; importance-weighted means per cell."""
    n = len(features)
    rank = [float(scores[j]) if int(cells[j]) >= 0 else math.inf for j in range(n)]
    order = sorted(range(n), key=lambda j: -rank[j])
    g = next((g for g in range(1, budget + 1) if len({int(cells[j]) for j in order[budget - g :]}) == g), 0)
    values = {j: features[j] for j in order[: budget - g]}
    pool = order[budget - g :] if g else []
    for cell in sorted({int(cells[j]) for j in pool}):
        members = sorted(j for j in pool if int(cells[j]) == cell)
        total = sum(float(scores[j]) for j in members)
        weights = [float(scores[j]) / total if total > 0 else 1 / len(members) for j in members]
        into = members[weights.index(max(weights))]
        values[into] = sum(w * features[j] for w, j in zip(weights, members))
    kept = sorted(values)
    return kept, torch.stack([values[j] for j in kept]), g


def test_vflowopt_recycles_the_least_important_tokens_per_cell_as_a_naive_loop(wide):
    features, scores, grids, _ = image_of(wide)
    cells = cell_ids(grid_coordinates(grids, len(features), features.device), 11.76)
    budget = kept_count(len(features), 0.25)
    kept, values = recycle(features, scores, cells, budget)
    expected_kept, expected_values, g = naive_recycle(features, scores, cells, budget)
    assert kept.tolist() == expected_kept and len(kept) == budget and g > 1
    torch.testing.assert_close(values, expected_values, atol=1e-5, rtol=0)


def test_vflowopt_counts_per_stage_and_its_lm_stages_rank_by_the_carried_importance(deep, wide):
    pruner = make_pruner("vflowopt", ratio=0.25, stage_ratios=[0.8, 0.5], layers=[1, 2])
    n = wide.visual_tokens
    record = generate(deep, wide, SETTINGS, pruner).record
    counts = [kept_count(n, 0.25 / 0.4), kept_count(n, 0.25 / 0.5), kept_count(n, 0.25)]
    for forward in record.forwards:
        assert [visual for _, _, visual in forward.layers] == [counts[0], counts[1], counts[2], counts[2]]
    features, scores, grids, _ = image_of(wide)
    cells = cell_ids(grid_coordinates(grids, len(features), features.device), pruner.cell)
    encoder, _, _ = naive_recycle(features, scores, cells, counts[0])
    rank = [float(scores[j]) if int(cells[j]) >= 0 else math.inf for j in encoder]
    expected = sorted(sorted(encoder, key=lambda j: -rank[encoder.index(j)])[: counts[2]])
    assert record.kept_visual[0] == expected
    with pytest.raises(ValueError, match="one stage ratio each"):
        make_pruner("vflowopt", layers=[1, 2, 3])
    with pytest.raises(ValueError, match="cell"):
        make_pruner("vflowopt", cell=0.5)


def test_vflowopt_with_lavidas_prefix_cache(lavida_models):
    model = lavida_models["lavida_dream"][0]
    pruner = make_pruner("vflowopt", ratio=0.25, stage_ratios=[0.5], layers=[1])
    prompt = prepared(model, [page((384, 192))], pruner)
    cached = GenerationSettings(8, 4, 8, stop_strings=(), prefix_cache=True)
    assert generate(model, prompt, cached, pruner).record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)


def test_the_search_scores_keep_all_as_identical_and_runs_as_a_command(deep, deep_dir, wide, tmp_path, capsys):
    settings = GenerationSettings(8, 1, 8, stop_strings=())
    assert flow_similarity(deep, [wide], settings, {"ratio": 1.0}) == pytest.approx(1.0, abs=1e-6)
    assert flow_similarity(deep, [wide], settings, {"ratio": 0.1}) < 1 - 1e-4
    drawn = candidates(0.25, 5, seed=3)
    assert drawn[0]["stage_ratios"] == [1.0, 0.6011] and drawn == candidates(0.25, 5, seed=3)
    assert all(math.prod(c["stage_ratios"]) >= 0.25 and 3 <= c["cell"] <= 24 for c in drawn)
    out = tmp_path / "trials.json"
    trials = main(["--model", str(deep_dir), "--samples", "1", "--trials", "2", "--ratio", "0.25", "--out", str(out)])
    assert json.loads(out.read_text()) == trials and trials[0]["similarity"] >= trials[1]["similarity"]
    assert "pruner=vflowopt ratio=0.25" in capsys.readouterr().out


def test_a_vscan_job_through_the_command_line(tmp_path):
    job = tmp_path / "job"
    quick = ["wandb.mode=disabled", "task.generation.llada_v.gen_length=8", "task.generation.llada_v.steps=4"]
    quick += ["task.generation.llada_v.block_length=8", "warmup=0", "paired_baseline=false"]
    command = [
        sys.executable,
        "-m",
        "redvtp_eval",
        *quick,
        "pruner=vscan",
        "ratio=0.25",
        "limit=1",
        f"hydra.run.dir={job}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sample,) = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    assert sample["visual_tokens_after"] == kept_count(sample["visual_tokens_before"], 0.25)
