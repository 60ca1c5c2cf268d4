"""The variants benchmark: every variant on the same samples, speed-ups against the official-style loop."""

from __future__ import annotations

import pytest

from redvtp_eval.bench.variants import RATIOS, VARIANTS, markdown, run_variants
from redvtp_eval.harness.offline_tasks import ROOT
from redvtp_eval.models.llada_v import load_llada_v


@pytest.fixture(scope="module")
def report():
    model = load_llada_v(ROOT / "checkpoints" / "toy-llada-v", dtype="float32")
    return run_variants(model, "redvtp_toy_docvqa", samples=1, fixed_steps=True)


def test_every_variant_answers_every_sample(report):
    pruned = sum(1 for _, is_pruned in VARIANTS.values() if is_pruned)
    assert len(report["rows"]) == len(VARIANTS) - pruned + pruned * len(RATIOS)
    assert all([s["doc_id"] for s in row["samples"]] == [0] for row in report["rows"])
    assert all(0 <= row["score"] <= 1 for row in report["rows"])


def test_speed_ups_are_against_the_official_loop_and_flops_follow_pruning(report):
    """Every planned step runs (fixed steps), so FLOPs depend on the variant alone, not on where answers stop."""
    rows = {(row["variant"], row["ratio"]): row for row in report["rows"]}
    official = rows[("official", None)]
    assert official["speedup_p50"] == official["flop_bound"] == 1.0
    redvtp = [rows[("redvtp", ratio)]["flop_bound"] for ratio in RATIOS]
    assert 1 < redvtp[0] <= redvtp[1] <= redvtp[2]  # r = 0.75, 0.5, 0.25: fewer tokens, fewer FLOPs
    for cached in ("fast_prefix", "fast_dual"):  # one full forward per block, then a window against the cache
        assert rows[(cached, None)]["flop_bound"] > 1
    assert rows[("fast_dual+redvtp", 0.25)]["flop_bound"] > rows[("fast_dual", None)]["flop_bound"]
    assert "| fast_dual+redvtp | 0.25 |" in markdown(report | {"model": "toy", "environment": {"device": "cpu"}})
