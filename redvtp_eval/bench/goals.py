"""Issue 16's speed goals at LLaDA-V size, by the FLOP model projected from small-size runs of the speed benchmark.

    python -m redvtp_eval.bench.goals                              # CPU, ~5 minutes: cpu-size runs, projected to full
    python -m redvtp_eval.bench.goals --runs 3 --warmup 1          # more rounds behind the measured CPU speed-ups
    python -m redvtp_eval.bench.goals --model llada_v --size full  # on a GPU: measured at LLaDA-V size itself

The goals, each at RedVTP r = 0.25 on the DocVQA page:

1. DocVQA shape: Fast-dLLM (``dual``, and ``prefix``) + RedVTP ≥ 10× the official-style unpruned no-cache loop;
2. DocVQA shape: RedVTP alone (no cache) ≥ 90% of its FLOP bound;
3. long-answer shape (``docvqa_long``): Fast-dLLM + RedVTP ≥ 1.5× Fast-dLLM alone.

Where it sits: on top of the speed benchmark (:func:`~redvtp_eval.bench.__main__.run_bench`), five runs of one
ratio each with ``project=<project>``: the DocVQA shape without a cache and with each Fast-dLLM cache, the long
shape with each cache. A Fast-dLLM run's baseline is Fast-dLLM unpruned; goal 1's is the no-cache run's, so goal 1
divides the no-cache run's unpruned side by the Fast-dLLM run's pruned side. Goals 1 and 3 are judged at the
projected size by the FLOP model; goal 2 needs a measured time at that size, so it is judged there only when the
runs are at that size (``--size`` = ``--project``), and otherwise at the run size alone. Without threshold decoding:
its step count follows a random model's confidences, which say nothing about a real answer's.

Written: ``<results_dir>/<device>/goals.json`` and ``.md``, and the five runs' own reports in ``goals/`` next to them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from redvtp_eval.bench.__main__ import CONFIG_DIR, GOAL_RATIO, run_bench
from redvtp_eval.bench.report import device_directory

RUNS = {
    "docvqa": ("docvqa", "none"),
    "docvqa_fast_dual": ("docvqa", "dual"),
    "docvqa_fast_prefix": ("docvqa", "prefix"),
    "long_fast_dual": ("docvqa_long", "dual"),
    "long_fast_prefix": ("docvqa_long", "prefix"),
}
"""Run name → (bench shape, fast_dllm); each runs RedVTP at r = 0.25 against its unpruned baseline."""
CACHES = ("dual", "prefix")
SPEEDUP_OVER_OFFICIAL = 10.0
SHARE_OF_BOUND = 0.9
SPEEDUP_OVER_FAST = 1.5


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _met(value: float | None, threshold: float) -> bool | None:
    return None if value is None else value >= threshold


def _speedup_goal(name: str, statement: str, threshold: float, numbers: dict) -> dict:
    """A speed-up goal, judged at the projected size by the FLOP model and at the run size by the measured p50."""
    return {
        "goal": name,
        "statement": statement,
        "threshold": threshold,
        "projected": {
            "flop_ratio": numbers["projected"],
            "roofline_ratio": numbers["roofline"],
            "met": _met(numbers["projected"], threshold),
        },
        "measured": {
            "flop_ratio": numbers["flops"],
            "speedup_p50": numbers["measured"],
            "achieved_over_bound": _ratio(numbers["measured"], numbers["flops"]),
            "met": _met(numbers["measured"], threshold),
        },
    }


def evaluate(rows: dict[str, dict], same_size: bool) -> list[dict]:
    """The goals from each run's r = 0.25 row of the speed report (``rows``: run name → row); ``same_size``: the
    runs are at the projected size, so their measured times are that size's."""
    official = rows["docvqa"]
    goals = []
    for cache in CACHES:
        fast = rows[f"docvqa_fast_{cache}"]
        numbers = {
            "projected": official["projected"]["generation_flops_baseline"]
            / fast["projected"]["generation_flops_pruned"],
            "roofline": _ratio(official["projected"]["roofline_s_baseline"], fast["projected"]["roofline_s_pruned"]),
            "flops": official["baseline"]["flops_total"] / fast["pruned"]["flops_total"],
            "measured": _ratio(official["baseline"]["latency_s"]["p50"], fast["pruned"]["latency_s"]["p50"]),
        }
        statement = f"DocVQA: Fast-dLLM {cache} + RedVTP r = 0.25 ≥ 10× the official-style unpruned no-cache loop"
        goals.append(_speedup_goal(f"1 {cache}", statement, SPEEDUP_OVER_OFFICIAL, numbers))
    bound, roofline = official["projected"]["speedup"], official["projected"]["roofline_speedup"]
    achieved = official["achieved_over_ideal"]
    goals.append(
        {
            "goal": "2",
            "statement": "DocVQA: RedVTP r = 0.25 alone (no cache) ≥ 90% of its FLOP bound",
            "threshold": SHARE_OF_BOUND,
            "projected": {
                "flop_bound": bound,
                "roofline_ratio": roofline,
                "roofline_over_bound": _ratio(roofline, bound),
                "met": _met(achieved, SHARE_OF_BOUND) if same_size else None,
            },
            "measured": {
                "flop_bound": official["ideal"]["speedup"],
                "speedup_p50": official["speedup_p50"],
                "achieved_over_bound": achieved,
                "met": _met(achieved, SHARE_OF_BOUND),
            },
        }
    )
    for cache in CACHES:
        row = rows[f"long_fast_{cache}"]
        numbers = {
            "projected": row["projected"]["speedup"],
            "roofline": row["projected"]["roofline_speedup"],
            "flops": row["ideal"]["speedup"],
            "measured": row["speedup_p50"],
        }
        statement = f"long answer: Fast-dLLM {cache} + RedVTP r = 0.25 ≥ 1.5× Fast-dLLM {cache} alone"
        goals.append(_speedup_goal(f"3 {cache}", statement, SPEEDUP_OVER_FAST, numbers))
    return goals


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "—"}[met]


def markdown(result: dict) -> str:
    size, project, env = result["size"], result["project"], result["environment"]
    lines = [
        f"# Speed goals (issue 16) at the `{project}` size, from `{size}`-size runs — {env['device']}",
        "",
        f"`{result['command']}` at commit `{env['commit']}`{' (dirty)' if env['dirty'] else ''}; "
        f"{result['runs']} measured + {result['warmup']} warm-up rounds per run, RedVTP r = {result['ratio']:g}, "
        "every run does every step. "
        f"At `{project}`: the FLOP model and the roofline (default: an H200's numbers) on the forwards the runs "
        "recorded, each layer as the run's; no kernel efficiency is modelled, memory-bound work only through the "
        f"roofline. At `{size}`: the FLOP model at that size and the measured p50 latencies"
        + (" (one round each: wall-clock noise is large)." if result["runs"] == 1 else ".")
        + " Threshold decoding is left out: its step count follows a random model's confidences.",
        "",
        f"| goal | threshold | `{project}`: FLOP model (roofline) | met | `{size}`: FLOP model "
        f"| `{size}`: measured p50 | achieved / bound | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for goal in result["goals"]:
        projected, measured = goal["projected"], goal["measured"]
        if goal["goal"] == "2":
            at_project = (
                f"bound {projected['flop_bound']:.2f}× (roofline {_num(projected['roofline_ratio'], '.2f')}×: "
                f"{_num(projected['roofline_over_bound'], '.0%')} of the bound)"
            )
            threshold, flops = f"{goal['threshold']:.0%} of the bound", f"{measured['flop_bound']:.2f}×"
        else:
            at_project = f"{projected['flop_ratio']:.2f}× ({_num(projected['roofline_ratio'], '.2f')}×)"
            threshold, flops = f"{goal['threshold']:g}×", f"{measured['flop_ratio']:.2f}×"
        lines.append(
            f"| {goal['goal']}: {goal['statement']} | {threshold} | {at_project} | {_verdict(projected['met'])} "
            f"| {flops} | {_num(measured['speedup_p50'], '.2f')}× | {_num(measured['achieved_over_bound'], '.0%')} "
            f"| {_verdict(measured['met'])} |"
        )
    lines += [
        "",
        f"Goal 2 at `{project}` is a measured share of the bound: "
        + (
            "judged on these runs, which are at that size."
            if size == project
            else "not judged here (it needs runs at that size, on a GPU); the roofline column is the share a run "
            "at the roofline would reach."
        ),
        "",
        "| run | command | report |",
        "|---|---|---|",
        *(f"| {name} | `{run['command']}` | `{run['report']}` |" for name, run in result["runs_made"].items()),
    ]
    return "\n".join(lines) + "\n"


def run_goals(
    model: str, size: str, project: str, runs: int, warmup: int, results_dir: str, overrides: list[str], command: str
) -> tuple[dict, Path]:
    """The five bench runs, then the goals; returns them and the JSON path."""
    rows, made, reports = {}, {}, []
    for name, (shape, cache) in RUNS.items():
        bench = [f"model={model}", f"bench_size={size}", f"bench_shape={shape}", f"fast_dllm={cache}"]
        bench += [f"ratios=[{GOAL_RATIO}]", f"runs={runs}", f"warmup={warmup}", "scoring=false", f"project={project}"]
        bench += [f"results_dir={results_dir}", *overrides]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("bench", overrides=bench)
        report, path = run_bench(cfg, " ".join(["python -m redvtp_eval.bench", *bench]), subfolder="goals")
        rows[name] = report["speed"][0]
        reports.append(report)
        made[name] = {"command": report["command"], "report": f"goals/{path.name}"}
    result = {
        "command": command,
        "size": size,
        "project": project,
        "ratio": GOAL_RATIO,
        "runs": runs,
        "warmup": warmup,
        "environment": reports[0]["environment"],
        "load_average": {"start": reports[0]["load_average"]["start"], "end": reports[-1]["load_average"]["end"]},
        "runs_made": made,
        "goals": evaluate(rows, same_size=size == project),
    }
    directory = device_directory(results_dir, result["environment"]["device"])
    path = directory / "goals.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return result, path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="the model group (family, dtype, device); default tiny (CPU)")
    parser.add_argument("--size", default="cpu", help="the bench size the runs use (default cpu)")
    parser.add_argument("--project", default="full", help="the bench size the goals are judged at (default full)")
    parser.add_argument("--runs", type=int, default=1, help="measured rounds per run (default 1)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up rounds per run (default 0)")
    parser.add_argument("--results-dir", default="results/bench")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every bench run (roofline.…)")
    args = parser.parse_args(argv)
    command = " ".join(["python -m redvtp_eval.bench.goals", *(argv if argv is not None else sys.argv[1:])])
    try:
        result, path = run_goals(
            args.model, args.size, args.project, args.runs, args.warmup, args.results_dir, args.overrides, command
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
