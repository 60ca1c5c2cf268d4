from __future__ import annotations

import pytest
import torch
from helpers import page

from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.redvtp import QUERY_SETS
from redvtp_eval.sampler import GenerationSettings, generate, transfer_schedule

SETTINGS = GenerationSettings(16, 8, 16, stop_strings=())


def naive_step_one_scores(model, prompt, settings, query_set):
    """RedVTP's S_1 from full eager attention maps, computed step by step as the official code does."""
    maps = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0]))
        for layer in model.network.model.layers
    ]
    gen = settings.gen_length
    tokens = torch.full((gen,), model.mask_token_id)
    embeds = torch.cat([prompt.embeds, model.embed(tokens)])
    length = len(embeds)
    with torch.no_grad():
        hidden = model.network.hidden_states(embeds[None], torch.arange(length)[None], None)
        logits = model.network.lm_head(hidden[0, -gen:]).float()
    for hook in hooks:
        hook.remove()
    logits[:, list(model.suppressed_token_ids)] = float("-inf")
    confidence = torch.softmax(logits.double(), -1).max(-1).values
    confidence[settings.block_length :] = float("-inf")
    decoded = torch.topk(
        confidence, transfer_schedule(settings.block_length, settings.steps // settings.num_blocks)[0]
    ).indices
    still_masked = torch.ones(gen, dtype=torch.bool)
    still_masked[decoded] = False
    prompt_length = len(prompt.embeds)
    ((start, end),) = prompt.visual_spans
    text = torch.tensor([p for p in range(prompt_length) if not start <= p < end])
    queries = {
        "masked": still_masked.nonzero().squeeze(1) + prompt_length,
        "prompt+masked": torch.cat([text, still_masked.nonzero().squeeze(1) + prompt_length]),
        "prompt": text,
        "all_response": torch.arange(gen) + prompt_length,
        "decoded": decoded.sort().values + prompt_length,
    }[query_set]
    attention = torch.stack([layer_map.mean(dim=0) for layer_map in maps]).mean(dim=0)
    return attention[queries][:, start:end].mean(dim=0)


@pytest.mark.parametrize("query_set", QUERY_SETS)
def test_scores_equal_a_naive_eager_reference(tiny, tiny_eager, query_set):
    prompt = tiny.prepare("What is the total?", [page((800, 600))], "no_think")
    pruner = make_pruner("redvtp", ratio=0.5, query_set=query_set, record_scores=True)
    record = generate(tiny, prompt, SETTINGS, pruner).record
    expected = naive_step_one_scores(
        tiny_eager, tiny_eager.prepare("What is the total?", [page((800, 600))], "no_think"), SETTINGS, query_set
    )
    (scores,) = record.scores[0]
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)
    kept = torch.topk(scores, int(len(scores) * 0.5)).indices.sort().values
    assert record.kept_visual == [kept.tolist()]


@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25, 0.1, 1e-6])
def test_kept_count_and_order(tiny, ratio):
    prompt = tiny.prepare("Q", [page()])
    record = generate(tiny, prompt, SETTINGS, make_pruner("redvtp", ratio=ratio)).record
    expected = max(1, int(1485 * ratio))
    assert record.visual_tokens_after == expected
    (kept,) = record.kept_visual
    assert len(kept) == expected and kept == sorted(set(kept))


def spy_positions(model, monkeypatch):
    seen = []
    logits = model.logits

    def spy(embeds, position_ids, at, probe=None):
        seen.append((len(embeds), position_ids.clone(), at.clone()))
        return logits(embeds, position_ids, at, probe)

    monkeypatch.setattr(model, "logits", spy)
    return seen


@pytest.mark.parametrize("keep_positions", [False, True])
def test_pruned_tokens_leave_the_sequence_and_positions_follow_the_option(tiny, monkeypatch, keep_positions):
    prompt = tiny.prepare("Q", [page()])
    ((start, end),) = prompt.visual_spans
    seen = spy_positions(tiny, monkeypatch)
    record = generate(tiny, prompt, SETTINGS, make_pruner("redvtp", ratio=0.25, keep_positions=keep_positions)).record
    full = len(prompt.embeds) + SETTINGS.gen_length
    removed = 1485 - 371
    assert seen[0][0] == full and torch.equal(seen[0][1], torch.arange(full))
    assert [length for length, _, _ in seen[1:]] == [full - removed] * (SETTINGS.steps - 1)
    _, positions, response = seen[1]
    assert torch.equal(response, torch.arange(full - removed - SETTINGS.gen_length, full - removed))
    if keep_positions:
        kept = torch.tensor(record.kept_visual[0])
        expected = torch.cat([torch.arange(start), start + kept, torch.arange(end, full)])
        assert torch.equal(positions, expected)
    else:
        assert torch.equal(positions, torch.arange(full - removed))


def test_each_image_is_pruned_on_its_own(tiny):
    prompt = tiny.prepare("Compare.", [page((800, 600)), page((500, 700), color="red")])
    record = generate(tiny, prompt, SETTINGS, make_pruner("redvtp", ratio=0.5)).record
    assert [len(kept) for kept in record.kept_visual] == [364, 364]
    assert record.visual_tokens_after == 728


def test_no_query_left_means_no_pruning(tiny):
    prompt = tiny.prepare("Q", [page()])
    record = generate(
        tiny, prompt, GenerationSettings(2, 1, 2, stop_strings=()), make_pruner("redvtp", ratio=0.5)
    ).record
    assert record.pruned_after_step is None and record.visual_tokens_after == 1485


def test_prune_after_a_later_step(tiny):
    record = generate(
        tiny, tiny.prepare("Q", [page()]), SETTINGS, make_pruner("redvtp", ratio=0.5, prune_after_step=3)
    ).record
    assert record.pruned_after_step == 3 and record.visual_tokens_after == 742


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("redvtp", {"ratio": 0}, r"must lie in \(0, 1\], got 0"),
        ("redvtp", {"ratio": 1.5}, r"must lie in \(0, 1\], got 1.5"),
        ("redvtp", {"query_set": "visual"}, "query_set 'visual' is not one of masked"),
        ("fastv", {}, "unknown pruner 'fastv'; choose one of none, redvtp, random"),
        ("redvtp", {"prune_after_step": 0}, "counts denoising steps from 1"),
    ],
)
def test_bad_pruner_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner(name, **options)
