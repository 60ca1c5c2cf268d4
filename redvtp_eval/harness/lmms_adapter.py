"""lmms-eval adapter: a pruned diffusion VLM as an lmms-eval model, plus a replayer of logged answers.

    lmms-eval --model redvtp_llada_v --include_path tasks --tasks redvtp_toy_docvqa \\
        --model_args pretrained=GSAI-ML/LLaDA-V,pruner=redvtp,ratio=0.5 \\
        --gen_kwargs gen_length=32,steps=16,block_length=32,think_mode=no_think
    lmms-eval --model redvtp_llada_v --include_path tasks --tasks redvtp_toy_docvqa \\
        --model_args family=lavida_llada,pruner=redvtp,ratio=0.5 \\
        --gen_kwargs max_new_tokens=32,block_length=32,step_ratio=0.5,prefix_lm=False

Where it sits: lmms-eval builds the requests and scores the answers; this adapter turns each request
into ``model.prepare`` → ``generate`` and times it. lmms-eval finds it by name through the
``lmms_eval.models`` entry point (:mod:`redvtp_eval.harness.lmms_plugin`); the harness passes the same name and a
``model_args`` string, so pruner and ratio are part of every lmms-eval record.

Per request, with ``paired_baseline`` (default), the adapter also runs the unpruned model on the same
sample through the same code and timer, alternating which of the two goes first so that drift hits both
alike; each sample's random stream (sampling, random pruning) is seeded from (seed, task, doc_id). With
``log_path``, every finished sample is appended to that JSONL file at once (answers, timings, token
counts, failures) and a re-run skips the samples already there. ``family`` (``llada_v`` by default,
``lavida_llada``, ``lavida_dream``) picks the loader and how the task's ``gen_kwargs`` are read: under that
family's official names (:mod:`redvtp_eval.engine.families`). lmms-eval's ``until`` is ignored, as in the
official wrappers.
"""

from __future__ import annotations

import json
import zlib

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from PIL import UnidentifiedImageError
from PIL.Image import DecompressionBombError
from tqdm import tqdm

from redvtp_eval.engine.families import family as model_family
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.harness.measurement import generation_fields, measure
from redvtp_eval.harness.samples_log import SamplesLog
from redvtp_eval.models.llada_v import ImageTagError, PromptTooLongError
from redvtp_eval.pruners import Pruner, make_pruner

SAMPLE_ERRORS = (UnidentifiedImageError, DecompressionBombError, OSError, PromptTooLongError, ImageTagError)
"""What makes one sample unusable (an image that does not decode, a prompt too long): recorded, the run goes on."""


def pruner_option(value):
    """A pruner option as lmms-eval's argument string delivers it: numbers and booleans come parsed; a list
    (``layers=[8, 16, 24]``) and ``None``/``null`` come as text and are read here."""
    if not isinstance(value, str):
        return value
    if value in ("None", "null"):
        return None
    if value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"pruner option {value!r} is not a list of numbers such as [8, 16, 24]") from None
    return value


class PrunedDiffusionVLM(lmms):
    """A diffusion VLM of any registered family with a pruner, driven by lmms-eval; batch size 1 (the sampler's)."""

    def __init__(
        self,
        pretrained: str | None = None,
        family: str = "llada_v",
        pruner: str = "redvtp",
        dtype: str | None = None,
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
        """Everything not named here is an option of the pruner (``ratio``, ``query_set``…); ``dtype`` defaults to
        the family's official precision (LLaDA-V float16, LaViDa bfloat16)."""
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"the diffusion sampler runs batch size 1, got batch_size={batch_size}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pruner = make_pruner(pruner, **{key: pruner_option(value) for key, value in pruner_options.items()})
        self.baseline = Pruner() if paired_baseline and pruner != "none" else None
        self.family = model_family(family)
        self.model = self.family.load(
            pretrained or self.family.hub_id,
            dtype=dtype or self.family.dtype,
            device=device,
            attn_implementation=attn_implementation,
        )
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
            lambda: generate(
                self.model,
                self.model.prepare(context, images, think_mode, tower_layer=pruner.tower_attention_layer()),
                settings,
                pruner,
                generator,
            ),
        )
        return generation_fields(run, settings)

    def _sample(self, request: Instance, position: int, warm: bool) -> dict:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        entry = {"task": task, "doc_id": doc_id, "rank": self.rank, "prediction": "", "failed": None}
        try:
            settings, think_mode = self.family.settings(gen_kwargs)
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

    def __init__(self, answers: dict[tuple[str, int], str], device: torch.device | None = None) -> None:
        """``device``: where lmms-eval puts its rank-gathering tensors (the evaluated model's, across ranks)."""
        super().__init__()
        self.answers = answers
        self.device = device or torch.device("cpu")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return [self.answers[(request.args[4], request.args[3])] for request in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError
