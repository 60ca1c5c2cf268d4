"""Training examples for the trained pruners (LVPruning's modules, LRS-VQA's region focus module): toy pages drawn
from a training seed (never the held-out splits), asked through the model's own prompt path.

Where it sits: beside the trainers in ``analysis``; it reads the toy task and the offline tasks' prompts (harness)
and prepares prompts with any model family the harness loads (``engine.families``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.engine.sampler import GenerationSettings
from redvtp_eval.harness.offline_tasks import TASKS, task_generation, task_prompt
from redvtp_eval.harness.toy_task import HELD_OUT_SEED, ToySample, sample_at
from redvtp_eval.models.base import Prompt

END_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")
"""The first of these the tokenizer knows pads an answer to the task's generation length (LLaDA-V: ``<|eot_id|>``)."""


@dataclass(frozen=True)
class Example:
    prompt: Prompt
    response: Tensor
    """(G,) the answer's token ids, padded with the end-of-turn token to the task's generation length."""
    settings: GenerationSettings
    task: str


def end_token(model) -> int:
    tokenizer = model.tokenizer
    for token in END_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn token to pad answers with")
    return tokenizer.eos_token_id


def question_and_answer(task: str, sample: ToySample) -> tuple[str, str]:
    if task == "redvtp_toy_docvqa":
        return task_prompt(task, {"question": sample.question}), sample.answer
    doc = {"question": sample.choice_question, "options": sample.options}
    return task_prompt(task, doc), chr(ord("A") + sample.correct_option)


def example(model, family: str, seed: int, index: int, tower_layer: int | None = None) -> Example:
    """Training example ``index`` of ``seed``: the two offline task forms alternate."""
    if seed >= HELD_OUT_SEED:
        raise ValueError(f"seed {seed} would draw from the held-out splits (seeds from {HELD_OUT_SEED})")
    task = list(TASKS)[index % len(TASKS)]
    sample = sample_at(seed, index)
    settings, think_mode = FAMILIES[family].settings(task_generation(task, family))
    question, answer = question_and_answer(task, sample)
    prompt = model.prepare(question, [sample.image], think_mode, tower_layer=tower_layer)
    ids = model.encode_text(answer)[: settings.gen_length]
    ids += [end_token(model)] * (settings.gen_length - len(ids))
    return Example(prompt, torch.tensor(ids, device=model.device), settings, task)
