"""Analysis: offline studies that run a model to choose a pruner's settings (AdaptInfer's pruning layers,
VFlowOpt's hyperparameter search), the trainers of the trained pruners' modules (LVPruning, LRS-VQA's RFM; their
shared command line in ``trainer_cli``) and RFM+DIP's vision-tower savings.

Where it sits: beside the harness, a user of the models, the engine's model families and the pruners' scoring
functions; what it writes reaches a job only through the command line: a setting, or a module file that
``pruner.modules=`` names.

May import: harness (the toy tasks' held-out samples and prompts), engine, models, pruners. Nothing imports it.
"""
