"""Which visual tokens a pruner keeps, measured against where the toy task's answer is drawn.

Where it sits: the toy report and the tests call :func:`answer_region_kept` on held-out toy samples;
it runs the engine directly (model + pruner + sampler), since lmms-eval never sees token positions.

A visual token belongs to the answer region when the image area it covers (base view or tile map,
:func:`~redvtp_eval.models.anyres.token_boxes`) overlaps the tag that holds the answer
(:meth:`~redvtp_eval.models.llada_v.LladaV.answer_region`, the mask the harness gives the oracle pruners).
"""

from __future__ import annotations

import torch

from redvtp_eval.engine.families import llada_v_settings
from redvtp_eval.engine.sampler import Generation, generate
from redvtp_eval.harness.offline_tasks import task_generation, task_prompt
from redvtp_eval.harness.toy_task import ToySample
from redvtp_eval.models.llada_v import LladaV
from redvtp_eval.pruners import Pruner

TASK = "redvtp_toy_docvqa"


def answer_tokens(model: LladaV, sample: ToySample) -> set[int]:
    """Indices (within the image's visual tokens) of the tokens that cover the answer tag."""
    return set(model.answer_region(sample.image, sample.answer_box).nonzero().squeeze(1).tolist())


def run(model: LladaV, sample: ToySample, pruner: Pruner, seed: int = 0, task: str = TASK) -> Generation:
    """One generation of the toy question about ``sample`` as the harness runs it (the region passed along)."""
    settings, think_mode = llada_v_settings(task_generation(task))
    doc = {"question": sample.question} if task == TASK else {"question": sample.choice_question}
    if task != TASK:
        doc["options"] = sample.options
    tower_layer = pruner.tower_attention_layer()
    prompt = model.prepare(task_prompt(task, doc), [sample.image], think_mode, tower_layer=tower_layer)
    generator = torch.Generator(model.device).manual_seed(seed)
    region = [model.answer_region(sample.image, sample.answer_box)]
    return generate(model, prompt, settings, pruner, generator, region)


def answer_region_kept(model: LladaV, sample: ToySample, pruner: Pruner, seed: int = 0) -> float:
    """Fraction of the answer region's visual tokens that ``pruner`` keeps when the free-answer question is asked
    (1.0 when it prunes nothing). ``seed`` seeds the generation's random stream (random pruning draws from it)."""
    record = run(model, sample, pruner, seed).record
    region = answer_tokens(model, sample)
    if record.kept_visual is None:
        return 1.0
    return len(region & set(record.kept_visual[0])) / len(region)
