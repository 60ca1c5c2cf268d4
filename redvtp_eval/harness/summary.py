"""From a job's per-sample log to its metrics: latency distribution, throughput, tokens kept, speed-up.

Where it sits: the job calls :func:`summarize` after lmms-eval has scored the answers, and prints
:func:`format_table` at the end of its output.

Definitions (also in the README):
- latency: end-to-end generate time of one sample — prompt construction, image preprocessing, vision
  encoder, every denoising step, pruning; device-synchronised. p50 / p90 / mean over measured samples.
- throughput, two ways: ``gen_length`` tokens per second (the sampler always fills ``gen_length``
  positions) and answer tokens per second (non-special tokens of the returned answer); each is total
  tokens over total latency of the measured samples.
- speed-up: unpruned p50 latency / pruned p50 latency, from the same samples in the same job.
"""

from __future__ import annotations

import statistics

TIMINGS = ("latency_s", "preprocess_s", "vision_s", "prune_s", "denoise_s", "first_step_s")


def distribution(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "mean": None, "raw": []}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p90": p90, "mean": statistics.fmean(ordered), "raw": values}


def side(runs: list[dict], score: float | None) -> dict:
    """Metrics of one side (pruned or unpruned) over its measured runs."""
    latency = sum(run["latency_s"] for run in runs)
    peaks = [run["peak_memory_gib"] for run in runs if run["peak_memory_gib"] is not None]
    return {
        "score": score,
        **{name: distribution([run[name] for run in runs]) for name in TIMINGS},
        "tokens_per_s_gen_length": sum(run["gen_length"] for run in runs) / latency if latency else None,
        "tokens_per_s_answer": sum(run["answer_tokens"] for run in runs) / latency if latency else None,
        "visual_tokens_before": statistics.fmean(run["visual_tokens_before"] for run in runs) if runs else None,
        "visual_tokens_after": statistics.fmean(run["visual_tokens_after"] for run in runs) if runs else None,
        "effective_visual_tokens": statistics.fmean(run["effective_visual_tokens"] for run in runs) if runs else None,
        "flops": statistics.fmean(run["flops"]["total"] for run in runs) if runs else None,
        "steps": statistics.fmean(run["steps"] for run in runs) if runs else None,
        "peak_memory_gib": max(peaks, default=None),
        "unparseable": sum(1 for run in runs if run.get("unparseable")),
    }


def summarize(entries: list[dict], score: float | None, baseline_score: float | None) -> dict:
    measured = [entry for entry in entries if entry["failed"] is None]
    pruned = side(measured, score)
    baselines = [entry["baseline"] for entry in measured if entry.get("baseline")]
    unpruned = side(baselines, baseline_score) if baselines else None
    speedup = None
    if unpruned and pruned["latency_s"]["p50"]:
        speedup = unpruned["latency_s"]["p50"] / pruned["latency_s"]["p50"]
    return {
        "samples": len(entries),
        "failed": len(entries) - len(measured),
        "failures": [{"doc_id": e["doc_id"], "reason": e["failed"]} for e in entries if e["failed"]],
        "pruned": pruned,
        "unpruned": unpruned,
        "speedup_p50": speedup,
        "score_delta": score - baseline_score if unpruned and None not in (score, baseline_score) else None,
        "per_rank": per_rank(measured),
    }


def per_rank(measured: list[dict]) -> dict | None:
    """Under data parallelism, each rank's sample count and pruned latency: a slow device shows up here."""
    ranks = sorted({entry.get("rank", 0) for entry in measured})
    if len(ranks) < 2:
        return None
    return {
        str(rank): {
            "samples": len(runs := [entry for entry in measured if entry.get("rank", 0) == rank]),
            "latency_s": distribution([run["latency_s"] for run in runs]),
        }
        for rank in ranks
    }


def _cell(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_table(metrics: dict, label: str) -> str:
    rows = (
        [("unpruned", metrics["unpruned"]), (label, metrics["pruned"])]
        if metrics["unpruned"]
        else [(label, metrics["pruned"])]
    )
    lines = [
        f"{'':<16}{'score':>8}{'p50 s':>9}{'p90 s':>9}{'tok/s gen':>11}{'tok/s ans':>11}{'visual tokens':>17}",
    ]
    for name, row in rows:
        lines.append(
            f"{name:<16}{_cell(row['score'], '.4f'):>8}{_cell(row['latency_s']['p50'], '.3f'):>9}"
            f"{_cell(row['latency_s']['p90'], '.3f'):>9}{_cell(row['tokens_per_s_gen_length'], '.2f'):>11}"
            f"{_cell(row['tokens_per_s_answer'], '.2f'):>11}"
            f"{_cell(row['visual_tokens_before'], '.0f'):>8} -> {_cell(row['visual_tokens_after'], '.0f'):<5}"
        )
    if metrics["speedup_p50"] is not None:
        lines.append(f"speed-up (unpruned p50 / pruned p50): {metrics['speedup_p50']:.2f}x")
    lines.append(f"samples: {metrics['samples']}, failed: {metrics['failed']}")
    return "\n".join(lines)
