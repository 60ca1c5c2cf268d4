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

Per request, with ``paired_baseline`` (the harness turns it on; from lmms-eval's own CLI it is opt-in:
``--model_args ...,paired_baseline=True,log_path=...``), the adapter also runs the unpruned model on the same
sample through the same code and timer, alternating which of the two goes first so that drift hits both
alike; each sample's random stream (sampling, random pruning) is seeded from (seed, task, doc_id). With
``log_path``, every finished sample is appended to that JSONL file at once (answers, timings, token
counts, failures) and a re-run skips the samples already there. ``family`` (``llada_v`` by default,
``lavida_llada``, ``lavida_dream``) picks the loader and how the task's ``gen_kwargs`` are read: under that
family's official names (:mod:`redvtp_eval.engine.families`). lmms-eval's ``until`` is ignored, as in the
official wrappers. A task this project knows (``configs/task/*.yaml`` names it for the family, under either
protocol) starts from that config's generation settings, so the stock CLI runs DocVQA at 32 tokens / 16 steps
as the harness does; the family's own names given with ``--gen_kwargs`` override them, except those that a
task YAML also sets (``max_new_tokens``, ``temperature``: their values cannot be told apart from the YAML's, so
for a known task they are the config's; change them in ``configs/task`` or run the task under a new name).

Matched cost: with ``budget`` (a fraction of the unpruned model's cost, by ``budget_metric``:
``effective_visual_tokens`` or ``flops``) instead of ``ratio``, the adapter calibrates on its first request
(:func:`redvtp_eval.engine.budget.calibrate`: the largest ratio whose cost on that sample, in the schedule's fixed
shape, is at most the budget), builds its pruner at that ratio and runs every sample with it. The calibration is
deterministic, so a resumed job finds the same ratio (and refuses a log written at another one). Every sample's
record then holds ``ratio`` and ``budget`` (target, metric, and ``cost_fraction``: the sample's cost over its
unpruned run's; without a paired baseline, effective visual tokens over the visual tokens, flops None).

What the sample's record says beyond the answer: ``truncated_image`` when an image decoded only because
lmms-eval lets PIL fill a truncated file (``LOAD_TRUNCATED_IMAGES``); ``raw_prediction`` when the answer
held characters a worksheet cannot store (MMBench writes answers into an xlsx submission), which are
removed from the ``prediction`` that lmms-eval scores.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from functools import cache

import torch
import yaml
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from PIL import ImageFile, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from tqdm import tqdm

from redvtp_eval.engine.budget import Calibration, calibrate, check_budget
from redvtp_eval.engine.families import family as model_family
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.harness.measurement import generation_fields, measure
from redvtp_eval.harness.offline_tasks import TASK_CONFIGS
from redvtp_eval.harness.samples_log import SamplesLog
from redvtp_eval.models.llada_v import ImageTagError, PromptTooLongError, TokenOutsideVocabularyError
from redvtp_eval.pruners import Pruner, make_pruner

SAMPLE_ERRORS = (
    UnidentifiedImageError,
    DecompressionBombError,
    OSError,
    PromptTooLongError,
    ImageTagError,
    TokenOutsideVocabularyError,
)
"""What makes one sample unusable (an image that does not decode, a prompt too long): recorded, the run goes on."""
REGION_COLUMN = "answer_box"
"""The document column (pixel box: left, top, right, bottom) that says where the answer is drawn (toy tasks)."""


@cache
def known_generation(task: str, family: str) -> dict:
    """The generation settings ``configs/task/*.yaml`` gives ``family`` on the lmms-eval task ``task`` (under
    either protocol, and its judge-free route); empty for a task no config names."""
    for path in sorted(TASK_CONFIGS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        routes = [config.get("tasks", {}), config.get("tasks_without_judge", {})]
        if any(protocol.get(family) == task for route in routes for protocol in route.values()):
            return dict(config["generation"][family])
    return {}


YAML_GENERATION_KEYS = frozenset({"max_new_tokens", "temperature", "top_p", "num_beams", "do_sample", "until"})
"""The keys lmms-eval's task YAMLs set under ``generation_kwargs``: for a known task they come from the YAML, not
from the user, so the task config's settings replace them."""


def task_settings(known: dict, gen_kwargs: dict) -> dict:
    """The gen_kwargs a request runs with: a known task's settings, then what the user set beyond the YAML's keys."""
    if not known:
        return gen_kwargs
    return known | {key: value for key, value in gen_kwargs.items() if key not in YAML_GENERATION_KEYS}


def decoded_visuals(visuals: Callable[[], list]) -> tuple[list, bool]:
    """The document's images (``visuals`` reads the document, which decodes ``datasets`` Image columns, and
    calls the task's ``doc_to_visual``), and whether one decoded only as a truncated file: lmms-eval lets PIL
    fill those in, so the sample is evaluated as lmms-eval would, and flagged."""
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return visuals(), False
    except OSError as error:
        if not allowed or "truncated" not in str(error):
            raise
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    return visuals(), True


def storable(fields: dict) -> dict:
    """The fields with the characters a worksheet rejects removed from the answer (kept as ``raw_prediction``)."""
    clean = ILLEGAL_CHARACTERS_RE.sub("", fields["prediction"])
    return (
        fields
        if clean == fields["prediction"]
        else fields | {"prediction": clean, "raw_prediction": fields["prediction"]}
    )


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
        paired_baseline: bool = False,
        warmup: int = 1,
        seed: int = 0,
        log_path: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        budget: float | None = None,
        budget_metric: str = "effective_visual_tokens",
        **pruner_options,
    ) -> None:
        """Everything not named here is an option of the pruner (``ratio``, ``query_set``…); ``dtype`` defaults to
        the family's official precision (LLaDA-V float16, LaViDa bfloat16). ``budget`` replaces ``ratio``: the ratio
        is calibrated on the first request (module docstring)."""
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"the diffusion sampler runs batch size 1, got batch_size={batch_size}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        options = {key: pruner_option(value) for key, value in pruner_options.items()}
        self.budget = None if pruner_option(budget) is None else check_budget(float(budget), budget_metric)
        self.calibration: Calibration | None = None
        if self.budget is not None:
            if "ratio" in options:
                raise ValueError("give the pruner a ratio or a budget, not both (budget picks the ratio)")
            if pruner == "none":
                raise ValueError("a budget picks a pruner's ratio; the unpruned model (pruner=none) has none")
            ranks = int(os.environ.get("WORLD_SIZE", 1))
            if ranks > 1:
                raise ValueError(
                    f"budget calibrates on the first sample of one process; this run has {ranks} ranks, "
                    "whose first samples differ: calibrate in one process and pass the ratio it reports"
                )
        self.pruner_at = lambda ratio: make_pruner(pruner, **options, ratio=ratio)
        self.pruner = self.pruner_at(1.0) if self.budget is not None else make_pruner(pruner, **options)
        self.baseline = Pruner() if paired_baseline and pruner != "none" else None
        self.family, self.family_name = model_family(family), family
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
        region: list[torch.Tensor] | None = None,
    ) -> dict:
        """One end-to-end generation (prompt + vision encoder + denoising), timed on the device; ``region``: the
        answer region per image, for a pruner that is told (oracles)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        run = measure(
            self.device,
            lambda: generate(
                self.model,
                self.model.prepare(context, images, think_mode, tower_layer=pruner.tower_attention_layer()),
                settings,
                pruner,
                generator,
                region,
            ),
        )
        return generation_fields(run, settings, self.model.config)

    def _inputs(self, request: Instance) -> tuple[str, list, bool, GenerationSettings, str | None, int]:
        """(context, images, truncated, settings, think mode, seed) of one request."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        settings, think_mode = self.family.settings(task_settings(known_generation(task, self.family_name), gen_kwargs))
        seed = zlib.crc32(f"{self.seed}/{task}/{doc_id}".encode())
        images, truncated = decoded_visuals(lambda: doc_to_visual(self.task_dict[task][split][doc_id]))
        return context, images, truncated, settings, think_mode, seed

    def calibrate(self, requests: list[Instance]) -> Calibration:
        """The ratio that meets the budget on the first request that can be prepared; the pruner is rebuilt at it."""
        target, metric = self.budget
        for request in requests:
            try:
                context, images, _, settings, think_mode, seed = self._inputs(request)
                layer = self.pruner.tower_attention_layer()
                prompt = self.model.prepare(context, images, think_mode, tower_layer=layer)
            except SAMPLE_ERRORS:
                continue
            _, _, _, doc_id, task, split = request.args
            region = self._region(self.task_dict[task][split][doc_id], images) if self.pruner.needs_region else None
            calibration = calibrate(
                self.model, prompt, settings, self.pruner_at, target, metric, seed=seed, region=region
            )
            self.calibration = calibration
            self.calibrated_on = {"task": request.args[4], "doc_id": request.args[3]}
            self.pruner = self.pruner_at(calibration.ratio)
            print(
                f"budget={target} by {metric}: ratio {calibration.ratio:.4f} costs {calibration.fraction:.3f} of the "
                f"unpruned model on {request.args[4]} doc {request.args[3]} ({len(calibration.tried)} trial runs)"
            )
            return calibration
        raise ValueError("no request could be prepared to calibrate the budget on (every image failed to decode)")

    def _budget_fields(self, measured: dict) -> dict:
        """The sample's ``ratio`` and ``budget`` (target, metric, the sample's cost over its unpruned cost)."""
        target, metric = self.budget
        pruned, baseline = measured["pruned"], measured.get("baseline")
        cost = pruned[metric] if metric == "effective_visual_tokens" else pruned["flops"]["total"]
        if baseline is not None:
            unpruned = baseline[metric] if metric == "effective_visual_tokens" else baseline["flops"]["total"]
        else:
            unpruned = pruned["visual_tokens_before"] if metric == "effective_visual_tokens" else None
        fraction = cost / unpruned if unpruned else None
        return {
            "ratio": self.calibration.ratio,
            "budget": {"target": target, "metric": metric, "cost_fraction": fraction},
        }

    def _sample(self, request: Instance, position: int, warm: bool) -> dict:
        _, _, _, doc_id, task, split = request.args
        entry = {"task": task, "doc_id": doc_id, "rank": self.rank, "prediction": "", "failed": None}
        try:
            context, images, truncated, settings, think_mode, seed = self._inputs(request)
            if truncated:
                entry["truncated_image"] = True
            region = self._region(self.task_dict[task][split][doc_id], images) if self.pruner.needs_region else None
            runs = [("pruned", self.pruner)] + ([("baseline", self.baseline)] if self.baseline else [])
            if not warm:
                for _ in range(self.warmup):
                    for _, pruner in runs:
                        self._timed(context, images, settings, think_mode, pruner, seed, region)
            measured = {}
            for name, pruner in runs if position % 2 == 0 else runs[::-1]:
                measured[name] = self._timed(context, images, settings, think_mode, pruner, seed, region)
        except SAMPLE_ERRORS as error:
            entry["failed"] = f"{type(error).__name__}: {error}"
            return entry
        entry |= storable(measured["pruned"])
        entry["baseline"] = storable(measured["baseline"]) if "baseline" in measured else None
        if self.budget is not None:
            entry |= self._budget_fields(measured)
        return entry

    def _region(self, doc: dict, images: list) -> list[torch.Tensor]:
        """The answer region of a one-image document with an ``answer_box`` column (the toy tasks), as a mask
        over the image's visual tokens (the model's AnyRes token layout)."""
        box = doc.get(REGION_COLUMN)
        if box is None or len(images) != 1:
            raise ValueError(
                f"pruner {self.pruner.name!r} needs each document's {REGION_COLUMN!r} on one image, which this "
                "task's documents lack; run it on task=redvtp_toy_docvqa or task=redvtp_toy_mcq"
            )
        return [self.model.answer_region(images[0], tuple(box))]

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        done = self.log.finished() if self.log else {}
        if self.budget is not None and self.calibration is None:
            ratio = self.calibrate(requests).ratio
            logged = {entry["ratio"] for entry in done.values() if entry.get("ratio") is not None}
            if logged - {ratio}:
                raise ValueError(
                    f"the log holds samples run at ratio {sorted(logged)}, but the budget calibrates to {ratio} now: "
                    "the model, the first sample or its settings changed; start a new job directory"
                )
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
