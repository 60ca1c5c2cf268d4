from __future__ import annotations

import pytest

from redvtp_eval.models.prompt import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, render_chat, splice_image_tokens, user_message


def test_llava_llada_template_renders_the_official_prompt(tiny):
    rendered = render_chat(tiny.tokenizer, user_message("What is the total?", 1, "no_think"))
    assert rendered == (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "<image>\nWhat is the total? /no_think<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_first_token_after_each_image_is_dropped(tiny):
    tokenizer = tiny.tokenizer
    prompt = render_chat(tokenizer, user_message("Why?", 1))
    ids = splice_image_tokens(prompt, tokenizer)
    after = ids[ids.index(IMAGE_PLACEHOLDER) + 1 :]
    assert tokenizer.decode(after).startswith("Why?")
    plain = tokenizer(prompt.replace("<image>", "")).input_ids
    newline = plain[ids.index(IMAGE_PLACEHOLDER)]
    assert tokenizer.decode([newline]) == "\n"
    assert ids == [IMAGE_PLACEHOLDER if index == ids.index(IMAGE_PLACEHOLDER) else t for index, t in enumerate(plain)]


def test_nothing_is_dropped_without_a_leading_bos(tiny):
    ids = splice_image_tokens("A<image>\nB", tiny.tokenizer)
    assert ids == [*tiny.tokenizer("A").input_ids, IMAGE_PLACEHOLDER, *tiny.tokenizer("\nB").input_ids]


def test_think_mode_suffixes_and_several_images():
    assert user_message("Q", 2, "think") == "<image> <image>\nQ /think"
    assert user_message("Q", 0) == "Q"
    assert user_message("Compare <image> and <image>", 2, "no_think") == "Compare <image> and <image>"
    with pytest.raises(ValueError, match="think_mode"):
        user_message("Q", 1, "maybe")
