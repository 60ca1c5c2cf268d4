from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import LAVIDA_FAMILIES
from helpers import page

from redvtp_eval.engine.families import lavida_dream_settings, lavida_llada_settings
from redvtp_eval.engine.sampler import GenerationSettings, generate, transfer_schedule
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.redvtp import QUERY_SETS

SETTINGS = GenerationSettings(16, 8, 16, stop_strings=())


def naive_hidden(model, embeds, mask):
    """The network's forward written out layer by layer, with an optional additive (1, 1, L, L) attention mask."""
    network = model.network
    positions = torch.arange(len(embeds))[None]
    hidden = embeds[None]
    rope = network.model.rotary_emb(hidden, positions)
    for layer in network.model.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    return network.model.norm(hidden)[0]


def naive_step_one_scores(model, prompt, settings, query_set):
    """RedVTP's S_1 from full eager attention maps, computed step by step as the official code does.

    With ``settings.prefix_cache`` the cache is replaced by what it means: one full forward in which the
    prompt rows may not attend to the response columns (and, for a shifted-logits model, the first answer
    token taken from that forward's last prompt position).
    """
    maps = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0]))
        for layer in model.network.model.layers
    ]
    gen = settings.gen_length
    prompt_length = len(prompt.embeds)
    length = prompt_length + gen
    mask = None
    if settings.prefix_cache:
        mask = torch.zeros(1, 1, length, length)
        mask[..., :prompt_length, prompt_length:] = float("-inf")
    tokens = torch.full((gen,), model.mask_token_id)
    rows = torch.arange(prompt_length, length)
    sources = rows - 1 if model.shifted_logits else rows
    with torch.no_grad():
        if settings.prefix_cache and model.shifted_logits:
            hidden = naive_hidden(model, torch.cat([prompt.embeds, model.embed(tokens)]), mask)
            tokens[0] = model.network.lm_head(hidden[prompt_length - 1]).argmax()
            maps.clear()
        hidden = naive_hidden(model, torch.cat([prompt.embeds, model.embed(tokens)]), mask)
        logits = model.network.lm_head(hidden[sources]).float()
    for hook in hooks:
        hook.remove()
    logits[:, list(model.suppressed_token_ids)] = float("-inf")
    probs = torch.softmax(logits.double(), -1)
    if settings.remasking == "margin":
        top = probs.topk(2, dim=-1).values
        confidence = top[:, 0] - top[:, 1]
    else:
        confidence = probs.max(-1).values
    masked = tokens == model.mask_token_id
    confidence[~masked] = float("-inf")
    confidence[settings.block_length :] = float("-inf")
    steps = settings.steps // settings.num_blocks
    count = transfer_schedule(int(masked[: settings.block_length].sum()), steps, settings.schedule, settings.shift)[0]
    decoded = torch.topk(confidence, count).indices
    still_masked = masked.clone()
    still_masked[decoded] = False
    ((start, end),) = prompt.visual_spans
    text = torch.tensor([p for p in range(prompt_length) if not start <= p < end])
    text_start = end  # the official code's ``text_start``: where the image's tokens end
    remasked = torch.tensor([prompt_length + i for i in range(gen) if still_masked[i]])
    queries = {
        "masked": remasked,
        "text_after_image+masked": torch.cat([torch.arange(text_start, prompt_length), remasked]),
        "text_after_image": torch.arange(text_start, prompt_length),
        "text_after_image+all_response": torch.arange(text_start, prompt_length + gen),
        "decoded": decoded.sort().values + prompt_length,
        "prompt_text+masked": torch.cat([text, remasked]),
        "prompt_text": text,
        "all_response": torch.arange(gen) + prompt_length,
    }[query_set]
    attention = torch.stack([layer_map.mean(dim=0) for layer_map in maps]).mean(dim=0)
    return attention[queries][:, start:end].mean(dim=0)


FAMILY_SETTINGS = {
    "llada_v": (SETTINGS, "no_think"),
    "lavida_llada": (lavida_llada_settings({"max_new_tokens": 16, "block_length": 16, "step_ratio": 0.5})[0], None),
    "lavida_dream": (lavida_dream_settings({"max_new_tokens": 16, "step_ratio": 0.5})[0], None),
}
"""Per family, 16 tokens in 8 steps under the family's own rules (LaViDa: uniform / Dream's timestep rule)."""
RESPONSE_QUERY_SETS = ("masked", "decoded")
"""Query sets that exist with the prefix cache, whose forwards query the response positions only."""
CASES = [
    *[("llada_v", False, query_set) for query_set in QUERY_SETS],
    *[(family, False, query_set) for family in LAVIDA_FAMILIES for query_set in ("masked", "text_after_image+masked")],
    *[(family, True, query_set) for family in LAVIDA_FAMILIES for query_set in RESPONSE_QUERY_SETS],
]


@pytest.fixture
def family_models(request, tiny, tiny_eager):
    """(sdpa model, eager model) of a family by name."""

    def models(family):
        return (tiny, tiny_eager) if family == "llada_v" else request.getfixturevalue("lavida_models")[family]

    return models


@pytest.mark.parametrize(("family", "prefix_cache", "query_set"), CASES)
def test_scores_equal_a_naive_eager_reference(family_models, family, prefix_cache, query_set):
    model, eager = family_models(family)
    settings, think_mode = FAMILY_SETTINGS[family]
    settings = replace(settings, prefix_cache=prefix_cache)
    prompt = model.prepare("What is the total?", [page((800, 600))], think_mode)
    pruner = make_pruner("redvtp", ratio=0.5, query_set=query_set, record_scores=True)
    record = generate(model, prompt, settings, pruner).record
    expected = naive_step_one_scores(
        eager, eager.prepare("What is the total?", [page((800, 600))], think_mode), settings, query_set
    )
    (scores,) = record.scores[0]
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)
    kept = torch.topk(scores, int(len(scores) * 0.5)).indices.sort().values
    assert record.kept_visual == [kept.tolist()]


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
def test_prompt_queries_need_the_uncached_forward(lavida_models, family):
    model, _ = lavida_models[family]
    settings = replace(FAMILY_SETTINGS[family][0], prefix_cache=True)
    with pytest.raises(ValueError, match="only the response positions are queried"):
        generate(model, model.prepare("Q", [page()]), settings, make_pruner("redvtp", query_set="text_after_image"))


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

    def spy(embeds, position_ids, at, probe=None, **options):
        seen.append((len(embeds), position_ids.clone(), at.clone()))
        return logits(embeds, position_ids, at, probe, **options)

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
    _, positions, candidates = seen[1]
    # logits at the response positions still masked: the 16 of the shortened sequence but the 2 step 1 committed
    response = torch.arange(full - removed - SETTINGS.gen_length, full - removed)
    assert len(candidates) == SETTINGS.gen_length - 2 and bool(torch.isin(candidates, response).all())
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
        ("no_such_pruner", {}, "unknown pruner 'no_such_pruner'; choose one of none, redvtp, random, oracle, "),
        ("redvtp", {"prune_after_step": 0}, "counts denoising steps from 1"),
    ],
)
def test_bad_pruner_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner(name, **options)
