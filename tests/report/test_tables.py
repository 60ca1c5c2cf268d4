"""The paired table carries what a benchmark scores beyond its headline: MME's other half, unparseable answers."""

from __future__ import annotations

import pandas as pd

from redvtp_eval.report.tables import paired_table


def test_sub_scores_and_unparseable_counts_reach_the_paired_table():
    job = {
        "task": "mme",
        "ratio": 0.5,
        "status": "done",
        "samples": 4,
        "score_pct": 2.5,
        "baseline_pct": 10.0,
        "paired_delta_pts": -25.0,
        "paired_ci_low_pts": -50.0,
        "paired_ci_high_pts": 0.0,
        "paired_p_value": 0.4,
        "paired_n": 4,
        "latency_p50_s": 1.0,
        "baseline_latency_p50_s": 2.0,
        "speedup_p50": 2.0,
        "visual_tokens_before": 100,
        "visual_tokens_after": 50,
        "unparseable": 1,
        "baseline_unparseable": 0,
        "sub_score:mme_perception_score,none": 50.0,
        "baseline_sub_score:mme_perception_score,none": 200.0,
        "sub_score:mme_cognition_score,none": 50.0,
        "baseline_sub_score:mme_cognition_score,none": 50.0,
    }
    (row,) = paired_table(pd.DataFrame([job])).to_dict("records")
    assert row["Benchmark"] == "MME"
    assert row["Unparseable (pruned / unpruned)"] == "1 / 0"
    assert row["Sub-scores (pruned / unpruned)"] == "mme_perception_score 50.0 / 200.0; mme_cognition_score 50.0 / 50.0"
