"""Which visual tokens a pruner keeps, measured against where the toy task's answer is drawn.

Where it sits: the toy report and the tests call :func:`answer_region_kept` on held-out toy samples;
it runs the engine directly (model + pruner + sampler), since lmms-eval never sees token positions.

A visual token belongs to the answer region when the image area it covers (base view or tile map,
:func:`~redvtp_eval.report.paper_figures.token_regions`) overlaps the box that holds the answer.
"""

from __future__ import annotations

import torch

from redvtp_eval.engine.families import llada_v_settings
from redvtp_eval.engine.sampler import generate
from redvtp_eval.harness.offline_tasks import task_generation, task_prompt
from redvtp_eval.harness.toy_task import ToySample
from redvtp_eval.models.llada_v import LladaV
from redvtp_eval.pruners import Pruner
from redvtp_eval.report.paper_figures import token_regions

TASK = "redvtp_toy_docvqa"


def answer_tokens(model: LladaV, sample: ToySample) -> set[int]:
    """Indices (within the image's visual tokens) of the tokens that cover the answer box."""
    boxes = token_regions(model, sample.image)
    left, top, right, bottom = sample.answer_box
    return {
        index
        for index, box in enumerate(boxes)
        if box is not None and box[0] < right and left < box[2] and box[1] < bottom and top < box[3]
    }


def answer_region_kept(model: LladaV, sample: ToySample, pruner: Pruner, seed: int = 0) -> float:
    """Fraction of the answer region's visual tokens that ``pruner`` keeps when the free-answer question is asked
    (1.0 when it prunes nothing). ``seed`` seeds the generation's random stream (random pruning draws from it)."""
    settings, think_mode = llada_v_settings(task_generation(TASK))
    question = task_prompt(TASK, {"question": sample.question})
    prompt = model.prepare(question, [sample.image], think_mode, tower_layer=pruner.tower_attention_layer())
    generator = torch.Generator(model.device).manual_seed(seed)
    record = generate(model, prompt, settings, pruner, generator).record
    region = answer_tokens(model, sample)
    if record.kept_visual is None:
        return 1.0
    return len(region & set(record.kept_visual[0])) / len(region)
