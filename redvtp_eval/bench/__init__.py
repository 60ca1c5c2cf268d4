"""Bench: the speed benchmark (``python -m redvtp_eval.bench``), random weights at the paper's sizes.

Workloads (``workload.py``), interleaved runs (``runs.py``), end-to-end speed (``speed.py``), the scoring
step against the official way (``scoring.py``), the FLOP model (``engine/flops.py``), profiler tables
(``profile.py``), the Markdown report (``report.py``), and issue 16's goals from projected runs (``goals.py``).

Where it sits: on top, a user of the models, pruners, engine and harness (its timing is the harness's
``measurement``). Nothing imports it except tests. Must not know: the report stage.
"""
