"""Harness: one job (model × task × pruner × ratio) through lmms-eval into one self-describing directory.

The job (``job.py``, called by ``python -m redvtp_eval``); the lmms-eval model adapter and its entry-point
plugin (``lmms_adapter.py``, ``lmms_plugin.py``); one timed generation (``measurement.py``); the
per-sample log (``samples_log.py``); the job's summary and final table (``summary.py``); the environment
record (``environment.py``); W&B (``tracking.py``); and the offline tasks the harness evaluates without a
download (``offline_tasks.py``, drawn from the toy task of ``toy_task.py``; ``python -m
redvtp_eval.harness.offline_tasks``).

May import: ``redvtp_eval.engine``, ``redvtp_eval.models``, ``redvtp_eval.pruners``.
Must not know: the report (sweeps, tables, figures), the toy model's training and studies, or the bench.
"""
