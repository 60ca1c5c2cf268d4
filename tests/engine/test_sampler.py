from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import page

from redvtp_eval.engine.sampler import (
    GenerationSettings,
    _first_stop,
    generate,
    official_autocast,
    transfer_schedule,
)
from redvtp_eval.pruners import Pruner, make_pruner


def official_counts(gen_length: int, steps: int, block_length: int) -> list[int]:
    """The official get_num_transfer_tokens, block by block, in its tensor form."""
    counts = []
    for _ in range(gen_length // block_length):
        per_block = steps // (gen_length // block_length)
        mask_num = torch.tensor([[block_length]])
        row = (mask_num // per_block).expand(-1, per_block).clone()
        row[torch.arange(per_block)[None] < mask_num % per_block] += 1
        counts.extend(c for c in row[0].tolist() if c)
    return counts


@pytest.mark.parametrize(
    ("gen_length", "steps", "block_length"),
    [(32, 16, 32), (32, 16, 8), (12, 5, 12), (64, 8, 16), (7, 3, 7), (4, 8, 4), (2, 2, 2)],
)
def test_unmask_counts_follow_the_official_schedule(tiny, gen_length, steps, block_length):
    settings = GenerationSettings(gen_length, steps, block_length, stop_strings=())
    result = generate(tiny, tiny.prepare("Read it.", [page()]), settings)
    assert result.record.unmasked_per_step == official_counts(gen_length, steps, block_length)
    assert sum(result.record.unmasked_per_step) == gen_length == len(result.token_ids)
    assert tiny.mask_token_id not in result.token_ids


def test_transfer_schedule_spreads_the_remainder_over_the_first_steps():
    assert transfer_schedule(32, 16) == [2] * 16
    assert transfer_schedule(12, 5) == [3, 3, 2, 2, 2]
    assert transfer_schedule(3, 5) == [1, 1, 1, 0, 0]


PRUNERS_THAT_KEEP_EVERYTHING = [
    ("none", {}),
    ("redvtp", {"ratio": 1.0}),
    ("redvtp", {"ratio": 1.0, "keep_positions": True}),
    ("redvtp", {"ratio": 1.0, "query_set": "text_after_image+masked", "record_scores": True}),
]


@pytest.mark.parametrize("settings", [GenerationSettings(32, 16, 32), GenerationSettings(16, 8, 4, stop_strings=())])
@pytest.mark.parametrize(("name", "options"), PRUNERS_THAT_KEEP_EVERYTHING)
def test_keeping_every_visual_token_reproduces_the_unpruned_tokens(tiny, settings, name, options):
    prompt = tiny.prepare("What is the total?", [page((800, 600))], "no_think")
    unpruned = generate(tiny, prompt, settings)
    result = generate(tiny, prompt, settings, make_pruner(name, **options))
    assert result.token_ids == unpruned.token_ids
    assert result.record.visual_tokens_after == prompt.visual_tokens
    if name == "redvtp":
        assert result.record.pruned_after_step == 1


def test_pruning_changes_the_canvas_of_the_tiny_model(tiny):
    """Guards the test above: the tiny model's output does depend on the visual tokens it keeps."""
    prompt = tiny.prepare("What is the total?", [page((800, 600))], "no_think")
    settings = GenerationSettings(16, 8, 16, stop_strings=())
    unpruned = generate(tiny, prompt, settings)
    assert generate(tiny, prompt, settings, make_pruner("redvtp", ratio=0.1)).token_ids != unpruned.token_ids


def test_suppressed_tokens_are_never_generated(tiny, monkeypatch):
    favoured = tiny.suppressed_token_ids + (tiny.tokenizer.convert_tokens_to_ids("<|eot_id|>"),)
    logits = tiny.logits

    def biased(*args, **kwargs):
        out = logits(*args, **kwargs)
        out[:, list(favoured)] += 100.0
        return out

    monkeypatch.setattr(tiny, "logits", biased)
    settings = GenerationSettings(8, 8, 8, stop_strings=())
    result = generate(tiny, tiny.prepare("Q", [page()]), settings)
    assert result.token_ids == [favoured[-1]] * 8


def test_stop_string_ends_the_answer_before_it(tiny):
    prompt = tiny.prepare("What is the total?", [page((800, 600))])
    free = generate(tiny, prompt, GenerationSettings(16, 8, 16, stop_strings=()))
    stop = tiny.tokenizer.decode([free.token_ids[8]])
    result = generate(tiny, prompt, GenerationSettings(16, 8, 16, stop_strings=(stop,)))
    assert result.record.stop_position == len(result.token_ids) < 16
    assert free.token_ids[8] not in result.token_ids
    assert tiny.mask_token_id not in result.token_ids


def test_earliest_of_several_stop_sequences_wins():
    tokens = torch.tensor([5, 1, 2, 3, 1, 2])
    assert _first_stop(tokens, [torch.tensor([1, 2]), torch.tensor([3])]) == 1
    assert _first_stop(tokens, [torch.tensor([3]), torch.tensor([1, 2])]) == 1
    assert _first_stop(tokens, [torch.tensor([2, 1])]) == len(tokens)  # none: the length


def test_sampling_with_temperature_is_reproducible_from_a_seed(tiny):
    prompt = tiny.prepare("Q", [page()])
    settings = GenerationSettings(16, 8, 16, temperature=1.0, remasking="random", stop_strings=())
    runs = [generate(tiny, prompt, settings, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gen_length": 32, "block_length": 5}, "not a multiple of block_length"),
        ({"gen_length": 32, "block_length": 8, "steps": 6}, "cannot be split evenly over 4 blocks"),
        ({"remasking": "entrophy"}, "remasking 'entrophy'"),
        ({"schedule": "sqrt"}, "schedule 'sqrt' is not one of uniform"),
        ({"shift": 0}, "shift must be > 0"),
        ({"steps": 0}, "must be positive"),
        ({"step_limit": 0}, "step_limit counts denoising steps"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_a_step_limit_ends_the_generation_there_with_the_same_commits_so_far(tiny, limit):
    prompt = tiny.prepare("Q", [page()])
    settings = GenerationSettings(16, 8, 8, stop_strings=())
    full = generate(tiny, prompt, settings, make_pruner("redvtp", ratio=0.5)).record
    cut = generate(
        tiny, prompt, GenerationSettings(16, 8, 8, stop_strings=(), step_limit=limit), make_pruner("redvtp", ratio=0.5)
    )
    assert cut.record.steps == len(cut.record.step_seconds) == limit
    assert cut.record.unmasked_per_step == full.unmasked_per_step[:limit]
    assert cut.record.forwards == full.forwards[: len(cut.record.forwards)]
    assert cut.record.visual_tokens_after == full.visual_tokens_after < full.visual_tokens_before


def test_the_record_accounts_for_time_and_tokens(tiny):
    prompt = tiny.prepare("Q", [page()])
    record = generate(tiny, prompt, GenerationSettings(8, 4, 8, stop_strings=()), Pruner()).record
    assert record.steps == len(record.step_seconds) == 4
    assert record.seconds["denoise"] == pytest.approx(sum(record.step_seconds))
    assert record.seconds["first_step"] == record.step_seconds[0]
    assert {"preprocess", "vision", "prune"} <= set(record.seconds)
    assert record.prompt_tokens == len(prompt.embeds)


@pytest.mark.parametrize(
    ("device", "dtype", "official", "expected"),
    [
        ("cuda", torch.float16, torch.float16, torch.float16),
        ("cuda", torch.bfloat16, torch.float16, None),
        ("cpu", torch.float16, torch.float16, None),
        ("cuda", torch.bfloat16, None, None),
    ],
)
def test_the_loop_runs_under_the_official_autocast_only_on_cuda_in_its_dtype(device, dtype, official, expected):
    model = SimpleNamespace(device=torch.device(device), dtype=dtype, autocast_dtype=official)
    assert official_autocast(model) == expected


def test_llada_v_declares_the_official_float16_autocast_and_lavida_none(tiny, lavida_models):
    assert tiny.autocast_dtype == torch.float16
    assert {model.autocast_dtype for model, _ in lavida_models.values()} == {None}


def test_threshold_one_commits_one_token_a_step_as_the_fixed_schedule_does(tiny):
    """No float64 probability of a random model reaches 1.0, so only the most confident position is committed."""
    prompt = tiny.prepare("What is the total?", [page()], "no_think")
    fixed = generate(tiny, prompt, GenerationSettings(8, 8, 4, stop_strings=()))
    parallel = generate(tiny, prompt, GenerationSettings(8, 8, 4, stop_strings=(), threshold=1.0))
    assert parallel.token_ids == fixed.token_ids
    assert parallel.record.unmasked_per_step == [1] * 8


def test_threshold_zero_fills_each_block_in_one_step(tiny):
    prompt = tiny.prepare("What is the total?", [page()], "no_think")
    one_step = generate(tiny, prompt, GenerationSettings(8, 2, 4, stop_strings=()))
    parallel = generate(tiny, prompt, GenerationSettings(8, 8, 4, stop_strings=(), threshold=0.0))
    assert parallel.token_ids == one_step.token_ids
    assert parallel.record.unmasked_per_step == [4, 4]


def test_threshold_commits_exactly_the_confident_positions(tiny, monkeypatch):
    """With confidences fixed by hand for the positions each step may commit (the masked ones, in order), each
    step commits those at or above the threshold, and at least one."""
    from redvtp_eval.engine import sampler

    sequence = iter([[0.95, 0.2, 0.91, 0.1], [0.5, 0.4], [0.9]])

    def confidence(logits, x0, remasking, generator):
        values = torch.tensor(next(sequence), dtype=torch.float64)
        assert len(values) == len(logits)
        return values

    monkeypatch.setattr(sampler, "_confidence", confidence)
    prompt = tiny.prepare("What is the total?", [page()], "no_think")
    result = generate(tiny, prompt, GenerationSettings(4, 4, 4, stop_strings=(), threshold=0.9))
    assert result.record.unmasked_per_step == [2, 1, 1]  # {0, 2}; then the best of {1, 3}: 1; then 3
    assert result.record.steps == 3


def test_a_threshold_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"threshold is a confidence in \[0, 1\], got 1.5"):
        GenerationSettings(threshold=1.5)
