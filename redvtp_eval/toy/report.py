"""The toy model's report: RedVTP vs random pruning on the held-out toy tasks, written to ``results/toy/``.

    python -m redvtp_eval -m model=toy task=redvtp_toy_docvqa,redvtp_toy_mcq pruner=redvtp,random \\
        ratio=1.0,0.75,0.5,0.25,0.1 results_dir=results/runs/toy-report wandb.mode=disabled
    python -m redvtp_eval -m model=toy task=redvtp_toy_docvqa pruner=redvtp,random ratio=0.75,0.5,0.25,0.1 \\
        pruner.keep_positions=true results_dir=results/runs/toy-report-keep wandb.mode=disabled
    python -m redvtp_eval.toy.report results/runs/toy-report --keep-positions-dir results/runs/toy-report-keep

Where it sits: after a sweep of ``python -m redvtp_eval`` (accuracy, latency, throughput, tokens kept
come from its ``metrics.json`` files), it adds the fraction of the answer region's visual tokens each
pruner keeps (``toy.analysis``, on the first ``--region-samples`` held-out free-answer samples) and the
training loss curve, and writes ``results.json``, ``README.md`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from redvtp_eval.harness.environment import environment  # noqa: E402
from redvtp_eval.harness.offline_tasks import held_out  # noqa: E402
from redvtp_eval.models.llada_v import load_llada_v  # noqa: E402
from redvtp_eval.pruners import make_pruner  # noqa: E402
from redvtp_eval.toy.analysis import TASK, answer_region_kept  # noqa: E402

CHECKPOINT = Path("checkpoints/toy-llada-v")
PRUNERS = ("redvtp", "random")


def collect(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("metrics.json"))]


def region_fractions(ratios: list[float], samples: int) -> dict:
    model = load_llada_v(CHECKPOINT, dtype="float32")
    fractions = {}
    for name in PRUNERS:
        for ratio in ratios:
            values = [
                answer_region_kept(model, held_out(TASK, index), make_pruner(name, ratio=ratio), seed=index)
                for index in range(samples)
            ]
            fractions[f"{name}@{ratio}"] = statistics.fmean(values)
    return fractions


def loss_figure(out: Path) -> None:
    log = [json.loads(line) for line in (CHECKPOINT / "train_log.jsonl").read_text().splitlines()]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for task in sorted({entry["task"] for entry in log}):
        steps = [entry["step"] for entry in log if entry["task"] == task]
        losses = [entry["loss"] for entry in log if entry["task"] == task]
        window = 10
        smooth = [statistics.fmean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
        axis.plot(steps, smooth, label=task)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("masked-diffusion loss (10-step mean)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "loss.png", dpi=120)
    plt.close(figure)


def cell(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def keep_positions_table(jobs: list[dict]) -> list[str]:
    lines = [
        "## redvtp_toy_docvqa with `pruner.keep_positions=true` (original RoPE positions kept)",
        "",
        "| r | RedVTP | random |",
        "|---|---|---|",
    ]
    rows = {(job["pruner"], job["ratio"]): job for job in jobs}
    for ratio in sorted({ratio for _, ratio in rows}, reverse=True):
        red, rnd = rows.get(("redvtp", ratio)), rows.get(("random", ratio))
        lines.append(f"| {ratio} | {cell(red and red['pruned']['score'])} | {cell(rnd and rnd['pruned']['score'])} |")
    return lines + [""]


def markdown(jobs: list[dict], kept_jobs: list[dict], fractions: dict, samples: int, command: str) -> str:
    lines = ["# Toy model: RedVTP vs random pruning", ""]
    lines += [f"Produced by `{command}` from the sweeps in the module docstring of `redvtp_eval/toy/report.py`.", ""]
    for task in sorted({job["task"] for job in jobs}):
        rows = {(job["pruner"], job["ratio"]): job for job in jobs if job["task"] == task}
        ratios = sorted({ratio for _, ratio in rows}, reverse=True)
        first = next(iter(rows.values()))
        lines += [
            f"## {task} ({first['metric']}, {first['samples']} held-out samples)",
            "",
            "| r | unpruned | RedVTP | random | visual tokens kept | p50 latency s (unpruned / RedVTP / random) "
            "| tok/s gen (RedVTP / random) | speed-up RedVTP |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ratio in ratios:
            red, rnd = rows.get(("redvtp", ratio)), rows.get(("random", ratio))
            base = red or rnd
            lines.append(
                f"| {ratio} | {cell(base['unpruned']['score'])} | {cell(red and red['pruned']['score'])} "
                f"| {cell(rnd and rnd['pruned']['score'])} "
                f"| {base['pruned']['visual_tokens_before']:.0f} → {base['pruned']['visual_tokens_after']:.0f} "
                f"| {cell(base['unpruned']['latency_s']['p50'])} / {cell(red and red['pruned']['latency_s']['p50'])} "
                f"/ {cell(rnd and rnd['pruned']['latency_s']['p50'])} "
                f"| {cell(red and red['pruned']['tokens_per_s_gen_length'], '.1f')} "
                f"/ {cell(rnd and rnd['pruned']['tokens_per_s_gen_length'], '.1f')} "
                f"| {cell(red and red['speedup_p50'], '.2f')}× |"
            )
        lines.append("")
    if kept_jobs:
        lines += keep_positions_table(kept_jobs)
    lines += [
        f"## Answer region kept ({TASK}, first {samples} held-out samples)",
        "",
        "Fraction of the visual tokens covering the asked box (base view and tiles) that survive pruning.",
        "",
        "| r | RedVTP | random |",
        "|---|---|---|",
    ]
    for ratio in sorted({float(key.split("@")[1]) for key in fractions}, reverse=True):
        lines.append(f"| {ratio} | {fractions[f'redvtp@{ratio}']:.3f} | {fractions[f'random@{ratio}']:.3f} |")
    lines += ["", "Training loss: `loss.png`; model card: `checkpoints/toy-llada-v/CARD.md`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--keep-positions-dir", type=Path, help="a sweep run with pruner.keep_positions=true")
    parser.add_argument("--out", type=Path, default=Path("results/toy"))
    parser.add_argument("--region-samples", type=int, default=64)
    args = parser.parse_args()
    jobs = collect(args.sweep_dir)
    kept_jobs = collect(args.keep_positions_dir) if args.keep_positions_dir else []
    ratios = sorted({job["ratio"] for job in jobs}, reverse=True)
    fractions = region_fractions(ratios, args.region_samples)
    args.out.mkdir(parents=True, exist_ok=True)
    command = f"python -m redvtp_eval.toy.report {args.sweep_dir} --region-samples {args.region_samples}"
    if args.keep_positions_dir:
        command += f" --keep-positions-dir {args.keep_positions_dir}"
    report = {
        "command": command,
        "environment": environment("cpu"),
        "jobs": jobs,
        "keep_positions_jobs": kept_jobs,
        "answer_region_kept": fractions,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "README.md").write_text(markdown(jobs, kept_jobs, fractions, args.region_samples, command))
    loss_figure(args.out)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
