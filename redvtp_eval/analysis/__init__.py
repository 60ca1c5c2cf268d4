"""Analyses that run a model with a pruner to choose or explain its settings (VFlowOpt's hyperparameter search).

May import: ``harness`` (the offline tasks' samples), ``engine``, ``models`` and ``pruners``. Nothing imports it.
"""
