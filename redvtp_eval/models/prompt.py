"""The prompt as the official evaluation builds it: chat template, then images spliced in at token level.

Where it sits: the model's ``prepare`` turns (question, images) into token ids with image placeholders,
which it then replaces by visual features.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
IMAGE_PLACEHOLDER = -200
"""Id standing for one image in the spliced ids (LLaVA's ``IMAGE_TOKEN_INDEX``)."""

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
"""System prompt of LLaDA-V's ``llava_llada`` conversation template, and of LaViDa's ``llada`` and ``dream``."""

LLADA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
"""LLaDA's chat rendering (LLaDA-V's tokenizer and ``GSAI-ML/LLaDA-8B-Instruct``, which LaViDa's ``llada``
conversation renders with): BOS before the first turn, the assistant header appended."""

CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen-style ChatML, as ``Dream-org/Dream-v0-Instruct-7B`` renders the turns that LaViDa's ``dream``
conversation passes it (always with a system turn here, so the default system line never appears)."""


def user_message(question: str, num_images: int, think_mode: str | None = None) -> str:
    """The user turn of the lmms-eval wrapper: ``<image>\\n{question}``, with `` /no_think`` or `` /think``.

    Several images become ``<image> <image>\\n{question}``, as the wrapper joins the placeholders with spaces.
    A question that holds ``<image>`` already is passed through as it is, without the think suffix, as the
    official LLaDA-V and LaViDa wrappers do.
    """
    if IMAGE_TOKEN in question:
        return question
    text = question
    if num_images:
        text = " ".join([IMAGE_TOKEN] * num_images) + "\n" + question
    if think_mode is not None:
        if think_mode not in ("think", "no_think"):
            raise ValueError(f"think_mode must be 'think', 'no_think' or None, got {think_mode!r}")
        text += f" /{think_mode}"
    return text


def render_chat(
    tokenizer: PreTrainedTokenizerBase, user: str, system: str = SYSTEM_PROMPT, chat_template: str | None = None
) -> str:
    """System and user turns, ending with the assistant header, rendered by ``chat_template`` or, without one,
    the checkpoint's own template (LLaDA-V's ``llava_llada`` conversation renders with the latter)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )


def splice_image_tokens(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of ``prompt`` with one :data:`IMAGE_PLACEHOLDER` per ``<image>``.

    Reproduces the official ``tokenizer_image_token``, quirk included: each text chunk is tokenized on
    its own, and when the first chunk starts with the BOS id, the first token of *every later chunk* is
    dropped. For ``<image>\\n{question}`` that is the ``\\n``: the model never sees it at inference.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    skip = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids.append(IMAGE_PLACEHOLDER)
        ids.extend(chunk[skip:])
    return ids
