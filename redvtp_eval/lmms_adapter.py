"""lmms-eval adapter: a pruned diffusion VLM as an lmms-eval model, plus a replayer of logged answers.

    lmms-eval --model redvtp_llada_v --include_path tasks --tasks redvtp_toy_docvqa \\
        --model_args pretrained=GSAI-ML/LLaDA-V,pruner=redvtp,ratio=0.5 \\
        --gen_kwargs gen_length=32,steps=16,block_length=32,think_mode=no_think

Where it sits: lmms-eval builds the requests and scores the answers; this adapter turns each request
into ``model.prepare`` → ``generate`` and times it. lmms-eval finds it by name through the
``lmms_eval.models`` entry point (:func:`manifests`); the harness passes the same name and a
``model_args`` string, so pruner and ratio are part of every lmms-eval record.

Per request, with ``paired_baseline`` (default), the adapter also runs the unpruned model on the same
sample through the same code and timer, alternating which of the two goes first so that drift hits both
alike; each sample's random stream (sampling, random pruning) is seeded from (seed, task, doc_id). With
``log_path``, every finished sample is appended to that JSONL file at once (answers, timings, token
counts, failures) and a re-run skips the samples already there. Generation settings come from the
task's ``gen_kwargs`` under LLaDA-V's names (``gen_length``, ``steps`` or ``gen_steps``, ``block_length``,
``remasking``, ``temperature``, ``think_mode``, ``stopping_criteria``); absent, they default to the
official wrapper's 2/2/2. ``<|eot_id|>`` always ends an answer; lmms-eval's ``until`` is ignored, as in the
official wrapper.
"""

from __future__ import annotations

import zlib

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import UnidentifiedImageError
from PIL.Image import DecompressionBombError
from tqdm import tqdm

from redvtp_eval.measurement import generation_fields, measure
from redvtp_eval.models.llada_v import PromptTooLongError, load_llada_v
from redvtp_eval.pruners import Pruner, make_pruner
from redvtp_eval.sampler import GenerationSettings, generate
from redvtp_eval.samples_log import SamplesLog

MODEL_NAME = "redvtp_llada_v"
END_OF_TURN = "<|eot_id|>"
SAMPLE_ERRORS = (UnidentifiedImageError, DecompressionBombError, OSError, PromptTooLongError)
"""What makes one sample unusable (an image that does not decode, a prompt too long): recorded, the run goes on."""


def manifests() -> ModelManifest:
    return ModelManifest(model_id=MODEL_NAME, simple_class_path="redvtp_eval.lmms_adapter.PrunedDiffusionVLM")


def generation_settings(gen_kwargs: dict) -> tuple[GenerationSettings, str | None]:
    """LLaDA-V's generation settings and think mode from a request's gen_kwargs."""
    stops = gen_kwargs.get("stopping_criteria", [])
    stops = [stops] if isinstance(stops, str) else list(stops)
    settings = GenerationSettings(
        gen_length=int(gen_kwargs.get("gen_length", 2)),
        steps=int(gen_kwargs.get("steps", gen_kwargs.get("gen_steps", 2))),
        block_length=int(gen_kwargs.get("block_length", 2)),
        temperature=float(gen_kwargs.get("temperature", 0.0)),
        remasking=gen_kwargs.get("remasking", "low_confidence"),
        stop_strings=tuple(dict.fromkeys([*stops, END_OF_TURN])),
    )
    return settings, gen_kwargs.get("think_mode")


class PrunedDiffusionVLM(lmms):
    """LLaDA-V with a pruner, driven by lmms-eval; batch size 1 (the diffusion sampler's)."""

    def __init__(
        self,
        pretrained: str = "GSAI-ML/LLaDA-V",
        pruner: str = "redvtp",
        dtype: str = "bfloat16",
        device: str | None = None,
        attn_implementation: str = "sdpa",
        paired_baseline: bool = True,
        warmup: int = 1,
        seed: int = 0,
        log_path: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **pruner_options,
    ) -> None:
        """Everything not named here is an option of the pruner (``ratio``, ``query_set``…)."""
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"the diffusion sampler runs batch size 1, got batch_size={batch_size}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pruner = make_pruner(pruner, **pruner_options)
        self.baseline = Pruner() if paired_baseline and pruner != "none" else None
        self.model = load_llada_v(pretrained, dtype=dtype, device=device, attn_implementation=attn_implementation)
        self.device = torch.device(device)
        self.warmup = int(warmup)
        self.seed = int(seed)
        self.log = SamplesLog(log_path) if log_path else None

    def _timed(
        self,
        context: str,
        images: list,
        settings: GenerationSettings,
        think_mode: str | None,
        pruner: Pruner,
        seed: int,
    ) -> dict:
        """One end-to-end generation (prompt + vision encoder + denoising), timed on the device."""
        generator = torch.Generator(self.device).manual_seed(seed)
        run = measure(
            self.device,
            lambda: generate(self.model, self.model.prepare(context, images, think_mode), settings, pruner, generator),
        )
        return generation_fields(run, settings)

    def _sample(self, request: Instance, position: int, warm: bool) -> dict:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        entry = {"task": task, "doc_id": doc_id, "prediction": "", "failed": None}
        try:
            settings, think_mode = generation_settings(gen_kwargs)
            seed = zlib.crc32(f"{self.seed}/{task}/{doc_id}".encode())
            images = doc_to_visual(self.task_dict[task][split][doc_id])
            runs = [("pruned", self.pruner)] + ([("baseline", self.baseline)] if self.baseline else [])
            if not warm:
                for _ in range(self.warmup):
                    for _, pruner in runs:
                        self._timed(context, images, settings, think_mode, pruner, seed)
            measured = {}
            for name, pruner in runs if position % 2 == 0 else runs[::-1]:
                measured[name] = self._timed(context, images, settings, think_mode, pruner, seed)
        except SAMPLE_ERRORS as error:
            entry["failed"] = f"{type(error).__name__}: {error}"
            return entry
        entry |= measured["pruned"]
        entry["baseline"] = measured.get("baseline")
        return entry

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        done = self.log.finished() if self.log else {}
        answers, warm = [], False
        for position, request in enumerate(tqdm(requests, desc="samples", unit="sample", dynamic_ncols=True)):
            _, _, _, doc_id, task, _ = request.args
            entry = done.get((task, doc_id))
            if entry is None:
                entry = self._sample(request, position, warm)
                warm = warm or entry["failed"] is None
                if self.log:
                    self.log.append(entry)
            counts = TokenCounts(input_tokens=entry.get("prompt_tokens"), output_tokens=entry.get("answer_tokens"))
            answers.append(GenerationResult(text=entry["prediction"], token_counts=counts))
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("diffusion VLMs are evaluated on generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported")


class RecordedAnswers(lmms):
    """Answers that were already generated, handed back to lmms-eval so that its own task code scores them."""

    def __init__(self, answers: dict[tuple[str, int], str]) -> None:
        super().__init__()
        self.answers = answers

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return [self.answers[(request.args[4], request.args[3])] for request in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError
