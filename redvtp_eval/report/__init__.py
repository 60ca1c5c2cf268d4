"""Report: finished (or partial) sweeps of jobs → tables, paired statistics, figures; the paper's grid.

``python -m redvtp_eval.report SWEEP_DIR`` (``report.py``): the sweep as one tidy table (``sweep.py``), the
paper's tables and the rivals table across pruners (``tables.py``) with paired differences (``paired.py``),
figures (``plots.py``); ``python -m redvtp_eval.report.reproduce`` (``reproduce.py``, ``make reproduce-tables``)
checks inputs, runs the grids and reports; ``paper_figures.py`` computes the paper's Figures 3 and 4 for ``notebooks/``.

May import: ``redvtp_eval.harness`` (job directories, per-sample logs, W&B) and the stages below it.
Must not know: the toy model's training and studies, or the bench; nothing below imports the report.
"""
