"""The speed benchmark's report: where it is written, and its Markdown tables.

Where it sits: ``python -m redvtp_eval.bench`` writes
``<results_dir>/<device>/<family>_<shape>_<size>_<pruner>[_prefix_cache].json``
(configuration, environment, FLOP model, every run's raw numbers) and the ``.md`` tables next to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def device_directory(results_dir: str | Path, device_name: str) -> Path:
    """``results/bench/nvidia-h100-80gb-hbm3``: one folder per device, named after it."""
    return Path(results_dir) / re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


CACHED = "; prefix-KV cache: one prefill, then each step runs the response rows only"


def _num(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _pair(a: float | None, b: float | None, spec: str = ".4g") -> str:
    return f"{_num(a, spec)} / {_num(b, spec)}"


def speed_table(report: dict) -> list[str]:
    lines = [
        "| r | visual tokens | sequence | latency p50 (p90) s, unpruned | latency p50 (p90) s, pruned | speed-up "
        "| FLOP bound | achieved / bound | roofline bound | achieved / roofline "
        "| tok/s (gen_length) unpruned → pruned | peak GiB unpruned / pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["speed"]:
        base, pruned = row["baseline"], row["pruned"]
        lines.append(
            f"| {row['ratio']:g} | {row['visual_tokens'][0]} → {row['visual_tokens'][1]} "
            f"| {row['sequence_length'][0]} → {row['sequence_length'][1]} "
            f"| {_num(base['latency_s']['p50'])} ({_num(base['latency_s']['p90'])}) "
            f"| {_num(pruned['latency_s']['p50'])} ({_num(pruned['latency_s']['p90'])}) "
            f"| {_num(row['speedup_p50'], '.2f')}× | {row['ideal']['speedup']:.2f}× "
            f"| {_num(row['achieved_over_ideal'], '.0%')} "
            f"| {_num(row['roofline_speedup'], '.2f')}× | {_num(row['achieved_over_roofline'], '.0%')} "
            f"| {_num(base['tokens_per_s_gen_length'], '.3g')} → {_num(pruned['tokens_per_s_gen_length'], '.3g')} "
            f"| {_pair(base['peak_memory_gib'], pruned['peak_memory_gib'], '.3g')} |"
        )
    return lines


def step_table(report: dict) -> list[str]:
    lines = [
        "| r | preprocess s | vision s | prefill s | scoring step s, unpruned / pruned | scoring overhead "
        "| step after pruning s, unpruned / pruned | step speed-up | FLOP bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cached = report["shape"]["prefix_cache"]
    for row in report["speed"]:
        base, pruned = row["baseline"], row["pruned"]
        lines.append(
            f"| {row['ratio']:g} | {_num(pruned['preprocess_s']['p50'])} | {_num(pruned['vision_s']['p50'])} "
            f"| {_num(pruned['prefill_s']['p50']) if cached else '—'} "
            f"| {_pair(base['scoring_step_s']['p50'], pruned['scoring_step_s']['p50'])} "
            f"| {_num(row['scoring_overhead_p50'], '+.1%')} "
            f"| {_pair(base['after_prune_step_s']['p50'], pruned['after_prune_step_s']['p50'])} "
            f"| {_num(row['step_speedup_p50'], '.2f')}× | {_num(row['ideal']['step_speedup'], '.2f')}× |"
        )
    return lines


def projection_table(report: dict) -> list[str]:
    lines = [
        "| r | generation TFLOP, unpruned → pruned | FLOP speed-up "
        "| roofline s, unpruned → pruned | roofline speed-up |",
        "|---|---|---|---|---|",
    ]
    for row in report["speed"]:
        p = row["projected"]
        tflop = f"{p['generation_flops_baseline'] / 1e12:.4g} → {p['generation_flops_pruned'] / 1e12:.4g}"
        lines.append(
            f"| {row['ratio']:g} | {tflop} "
            f"| {p['speedup']:.2f}× | {_num(p['roofline_s_baseline'])} → {_num(p['roofline_s_pruned'])} "
            f"| {_num(p['roofline_speedup'], '.2f')}× |"
        )
    return lines


PROJECTION_NOTE = (
    "The FLOP model and the roofline (weights in half precision, the configured machine) evaluated at these "
    "dimensions on the forwards the runs recorded, each layer as the run's: no kernel efficiency is modelled, and "
    "memory-bound work only through the roofline."
)


def scoring_table(scoring: dict) -> list[str]:
    lines = ["| scoring step | p50 s | p90 s | vs plain (p50) | peak GiB |", "|---|---|---|---|---|"]
    plain = scoring["steps"]["plain"]["seconds"]["p50"]
    labels = {
        "plain": "plain (SDPA, unpruned)",
        "probed": "probed (SDPA + probe rows + RedVTP top-k)",
        "official": "official (eager, per-layer T×T maps averaged)",
    }
    for name, step in scoring["steps"].items():
        seconds = step["seconds"]
        lines.append(
            f"| {labels[name]} | {_num(seconds['p50'])} | {_num(seconds['p90'])} "
            f"| {_num(seconds['p50'] / plain - 1, '+.1%') if name != 'plain' else '—'} "
            f"| {_num(step['peak_memory_gib'], '.3g')} |"
        )
    return lines


def markdown(report: dict) -> str:
    config, shape, env = report["config"], report["shape"], report["environment"]
    runs = config["runs"]
    lines = [
        f"# Speed: {config['pruner']['name']} vs unpruned — {config['model']['family']}, "
        f"`{config['bench_shape']['name']}` shape, `{config['bench_size']['name']}` size, "
        f"{'prefix-KV cache, ' if shape['prefix_cache'] else ''}{env['device']}, {config['model']['dtype']}",
        "",
        f"`{report['command']}` at commit `{env['commit']}`{' (dirty)' if env['dirty'] else ''}; "
        f"torch {env['libraries']['torch']}, {env['cpu_threads']} CPU threads; 1-minute load average "
        f"{report['load_average']['start'][0]:.1f} at the start, {report['load_average']['end'][0]:.1f} at the end.",
        f"Random weights; {shape['visual_tokens']} visual tokens ({shape['crops']} crops of "
        f"{shape['image_size'][0]}×{shape['image_size'][1]}), {shape['prompt_tokens']} prompt tokens, "
        f"gen_length {shape['gen_length']}, {shape['steps']} steps, block {shape['block_length']}"
        f"{CACHED if shape['prefix_cache'] else ''}"
        + (
            f"; each run replays the step count of one sample of `{shape['workload']}` in turn (its side's)"
            if shape.get("replayed_steps")
            else "; every run does every step"
        )
        + f". {config['warmup']} warm-up + {runs} measured rounds per ratio, "
        "unpruned and pruned alternating.",
        "",
        "## End to end",
        "",
        *speed_table(report),
        "",
        "## Inside a generation (p50)",
        "",
        *step_table(report),
    ]
    if report.get("projection"):
        lines += [
            "",
            f"## Projected to the `{report['projection']['size']}` size",
            "",
            PROJECTION_NOTE,
            "",
            *projection_table(report),
        ]
    if report["scoring"]:
        lines += [
            "",
            f"## Scoring step against the official way (T = {report['scoring']['sequence_length']}, "
            f"r = {report['scoring']['ratio']:g})",
            "",
            *scoring_table(report["scoring"]),
        ]
    return "\n".join(lines) + "\n"


def write(report: dict, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    (directory / f"{stem}.md").write_text(markdown(report))
    return path
