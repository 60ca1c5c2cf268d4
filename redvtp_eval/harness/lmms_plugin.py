"""The ``lmms_eval.models`` entry point: how ``lmms-eval --model redvtp_llada_v`` finds our adapter.

A module of its own, importing nothing of lmms-eval until called: lmms-eval reads entry points while
``lmms_eval.models`` is being imported, and the adapter module imports ``lmms_eval.models``, so pointing
the entry point at the adapter would be a circular import whenever the adapter is imported first.
"""

from __future__ import annotations

MODEL_NAME = "redvtp_llada_v"


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path="redvtp_eval.harness.lmms_adapter.PrunedDiffusionVLM")
