"""redvtp-eval: visual-token pruning in diffusion vision-language models, evaluated and timed.

The data path, one folder per stage (README, "Where things are"):

    configs/ → harness (job) → models (network + image pipeline) + pruners → engine (sampler)
             → harness (lmms-eval adapter → per-sample log → metrics) → report (tables, figures)

Imports go one way, from a stage to the stages below it: models ← engine ← harness ← report, with
pruners beside the models (they see neither the models nor the harness); toy/ and bench/ sit on top as
users of the stages below, and nothing but the entry points and the tests imports them. The table of
allowed imports is ``ALLOWED`` in ``tests/test_layout.py``. Only the entry point ``python -m redvtp_eval``
(``__main__.py``) lives at this level.
"""

import os

# Nothing is downloaded by this tool. huggingface_hub copies HF_HUB_OFFLINE into a constant when it is first
# imported, so the variables are set here, before any module of the package can import it (a user's own
# setting wins).
for _variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_variable, "1")


def _cost_tag(ratio: float, budget: float | None, metric: str | None) -> str:
    """How a job directory names what the pruner was held to: ``r0.5`` (a ratio) or ``budget0.5`` /
    ``budget0.5-flops`` (a cost target, ``budget=``; README "Matched cost"). Used by ``configs/pruner/*.yaml``."""
    if budget is None:
        return f"r{ratio}"
    return f"budget{budget}" + ("" if metric in (None, "effective_visual_tokens") else f"-{metric}")


def _register_resolvers() -> None:
    """``${cost_tag:...}`` for the configs, registered wherever the package is imported (every entry point, the
    submitit launcher's job processes, tests that compose the configs)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("cost_tag", _cost_tag, replace=True)


_register_resolvers()
