"""Engine: one answer from a prepared prompt, with a pruner between denoising steps.

The masked-diffusion sampler and its schedules (``sampler.py``: ``generate``, ``GenerationSettings``, the
record of a generation, and ``ProbedAttention``, the attention a pruner is handed); model families by
name, each with its loader and the parser of its official gen_kwargs (``families.py``); the analytic FLOP
model of a generation from its record (``flops.py``, one model for the harness's per-sample cost and the
benchmark's bounds); the ratio at which a pruner meets a cost budget (``budget.py``: ``calibrate``, bisection on
that FLOP model and the record's effective visual tokens); one question by hand (``generate.py``,
``python -m redvtp_eval.engine.generate``).

May import: ``redvtp_eval.models`` and ``redvtp_eval.pruners``.
Must not know: the harness, lmms-eval, Hydra configs, job directories or reports.
"""
