"""python -m redvtp_eval.report SWEEP_DIR [--out results] [--wandb ...]: see :mod:`redvtp_eval.report.report`."""

from redvtp_eval.report.report import main

main()
