"""Toy: the small LLaDA-V that ``make run`` evaluates, trained here and studied here.

Training from scratch on the toy task (``train.py``, ``python -m redvtp_eval.toy.train DIR``); which
visual tokens a pruner keeps on the toy pages (``analysis.py``); the toy results in ``results/toy/``
(``report.py``, ``python -m redvtp_eval.toy.report SWEEP_DIR``). The task itself and its offline splits
belong to the harness (``harness/toy_task.py``, ``harness/offline_tasks.py``), which evaluates them.

Where it sits: on top, a user of every stage below (models, pruners, engine, harness, report).
Nothing imports it except tests.
"""
