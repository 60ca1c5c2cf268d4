"""Analysis: offline studies that run a model to choose a pruner's settings (AdaptInfer's pruning layers,
VFlowOpt's hyperparameter search).

Where it sits: beside the harness, a user of the models, the engine's model families and the pruners' scoring
functions; it writes nothing the harness reads (its output is a setting to pass on the command line).

May import: harness (the toy tasks' held-out samples and prompts), engine, models, pruners. Nothing imports it.
"""
