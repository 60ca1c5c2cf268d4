"""Where a generation's time goes: torch.profiler over one unpruned and one pruned run, as operator tables.

Where it sits: ``python -m redvtp_eval.bench profile=true`` writes ``<shape>_<size>_<pruner>_profile.txt`` next to
the report, after the measured runs (the profiler's own overhead never enters a reported time).
"""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from redvtp_eval.bench.speed import one_run
from redvtp_eval.bench.workload import Workload
from redvtp_eval.pruners import Pruner

ROWS = 30


def operator_tables(workload: Workload, pruner: Pruner, seed: int) -> str:
    """Operators sorted by their own device time (CPU time on the CPU), top 30, for each of the two runs."""
    cuda = workload.model.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    sections = []
    for label, run_pruner in (("unpruned", Pruner(prune_after_step=pruner.prune_after_step)), ("pruned", pruner)):
        with profile(activities=activities) as profiler:
            one_run(workload, run_pruner, seed)
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=ROWS)
        sections.append(f"## {label} ({pruner.name}, ratio {getattr(pruner, 'ratio', 1.0):g})\n\n{table}")
    return "\n\n".join(sections) + "\n"
