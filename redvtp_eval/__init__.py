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
