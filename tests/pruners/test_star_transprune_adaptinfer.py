"""STAR (tower attention, then cross-modal attention in the LM), TransPrune (token transition variation plus the
instruction's attention) and AdaptInfer (text priors weighing text→visual attention): naive references from full
eager attention maps and hidden states, kept counts, keep-all, and option errors."""

from __future__ import annotations

import pytest
import torch
from conftest import DEEP_LAYERS
from helpers import layer_maps, page
from test_rivals import SETTINGS, Capture, region_of

from redvtp_eval.engine.sampler import generate
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import kept_count, received_attention
from redvtp_eval.pruners.transprune import doubling_fractions

QUESTION = "What is the total?"


@pytest.fixture(scope="module")
def prompt(deep):
    return deep.prepare(QUESTION, [page((384, 192))], "no_think", -1)


class ScoreCapture:
    """Wraps a pruner's ``layer_scores`` to keep what it returned, per layer."""

    def __init__(self, pruner):
        self.seen = {}
        original = pruner.layer_scores

        def layer_scores(context):
            scores = original(context)
            self.seen[context.layer] = scores
            return scores

        pruner.layer_scores = layer_scores


def layer_outputs(model, prompt):
    """The input of layer 1 and every layer's (L, d) output in step 1's full forward (every response row masked)."""
    outputs = []
    hooks = [
        layer.register_forward_hook(lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out)[0]))
        for layer in model.network.model.layers
    ]
    with torch.no_grad():
        embeds = torch.cat([prompt.embeds, model.embed(torch.full((SETTINGS.gen_length,), model.mask_token_id))])
        model.logits(embeds, torch.arange(len(embeds)), torch.arange(len(prompt.embeds), len(embeds)))
    for hook in hooks:
        hook.remove()
    return [embeds, *outputs]


def after_image_rows(prompt):
    return list(range(prompt.visual_spans[-1][1], len(prompt.embeds)))


def naive_received(attention, rows, start, end):
    heads = attention.shape[0]
    out = torch.zeros(end - start)
    for j in range(start, end):
        out[j - start] = sum(attention[h, i, j] for h in range(heads) for i in rows) / (heads * len(rows))
    return out


KEEP_ALL = [
    ("star", {"ratio": 1.0}),
    ("star", {"ratio": 1.0, "self_attention": "features"}),
    ("transprune", {"ratio": 1.0, "layers": [1, 2, 3]}),
    ("transprune", {"ratio": 1.0, "attention": False}),
    ("adaptinfer", {"ratio": 1.0, "layers": [1, 3]}),
]


@pytest.mark.parametrize(("name", "options"), KEEP_ALL)
def test_keeping_every_token_reproduces_the_unpruned_tokens(deep, prompt, name, options):
    unpruned = generate(deep, prompt, SETTINGS)
    result = generate(deep, prompt, SETTINGS, make_pruner(name, **options), region=region_of(prompt))
    assert result.token_ids == unpruned.token_ids
    assert result.record.visual_tokens_after == prompt.visual_tokens
    assert result.record.effective_visual_tokens == prompt.visual_tokens


# STAR


def naive_feature_self_attention(x):
    n = len(x)
    received = torch.zeros(n)
    for i in range(n):  # softmax over each row by hand, then the mean each column receives
        logits = x[i] @ x.T / x.shape[1] ** 0.5
        received += (logits - logits.max()).exp() / (logits - logits.max()).exp().sum() / n
    return received


@pytest.mark.parametrize("self_attention", ["tower", "features"])
def test_star_stage_one_keeps_the_top_self_attention_before_the_lm(deep, prompt, self_attention):
    """With ``first_ratio = ratio`` stage 2 keeps all that stage 1 left: the kept set is stage 1's exactly."""
    pruner = make_pruner("star", ratio=0.5, first_ratio=0.5, layer=3, self_attention=self_attention)
    record = generate(deep, prompt, SETTINGS, pruner).record
    ((start, end),) = prompt.visual_spans
    n, k = end - start, kept_count(end - start, 0.5)
    scores = prompt.tower_attention[0] if self_attention == "tower" else None
    if scores is None:
        scores = naive_feature_self_attention(prompt.embeds[start:end].float())
    assert record.kept_visual[0] == torch.topk(scores, k).indices.sort().values.tolist()
    assert [visual for _, _, visual in record.forwards[0].layers] == [k] * 4 and n > k


def test_star_stage_two_scores_equal_a_naive_eager_reference(deep, deep_eager, prompt):
    pruner = make_pruner("star", ratio=0.25, first_ratio=1.0, layer=2)
    capture = Capture(pruner)
    record = generate(deep, prompt, SETTINGS, pruner).record
    ((context, kept),) = capture.seen
    ((start, end),) = prompt.visual_spans
    length = len(prompt.embeds)
    rows = after_image_rows(prompt) + list(range(length, length + SETTINGS.gen_length))
    naive = naive_received(layer_maps(deep_eager, prompt)[1], rows, start, end)
    ours = received_attention(context, "after_image+response")[0]
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=0)
    k = kept_count(end - start, 0.25)
    assert kept[0].tolist() == torch.topk(naive, k).indices.sort().values.tolist()
    assert record.visual_tokens_after == k and record.pruned_at == ["before_lm", "step1/layer2"]
    assert [visual for _, _, visual in record.forwards[-1].layers] == [end - start] * 2 + [k] * 2


# TransPrune


def naive_ttv(before, after):
    """One layer's TTV, token by token: ‖Δ‖/‖h‖ times a hand-written softmax over the tokens of 1 − cos(h, Δ)."""
    n = len(before)
    update = [after[i] - before[i] for i in range(n)]
    magnitude = torch.tensor([update[i].norm() / before[i].norm() for i in range(n)])
    cosine = torch.tensor([torch.dot(before[i], update[i]) / (before[i].norm() * update[i].norm()) for i in range(n)])
    return magnitude * (1 - cosine).exp() / (1 - cosine).exp().sum()


@pytest.mark.parametrize("attention", [True, False])
def test_transprune_scores_equal_naive_ttv_plus_iga(deep, deep_eager, prompt, attention):
    pruner = make_pruner("transprune", ratio=0.25, layers=[1, 3], ratios=[1.0], attention=attention)
    capture = ScoreCapture(pruner)
    record = generate(deep, prompt, SETTINGS, pruner).record
    ((start, end),) = prompt.visual_spans
    hidden = [h.float() for h in layer_outputs(deep_eager, prompt)]
    ttv = sum(naive_ttv(hidden[layer - 1][start:end], hidden[layer][start:end]) for layer in (1, 2, 3))
    naive = ttv / ttv.sum()
    if attention:
        iga = naive_received(layer_maps(deep_eager, prompt)[2], after_image_rows(prompt), start, end)
        naive = naive + iga / iga.sum()
    torch.testing.assert_close(capture.seen[3][0], naive, atol=1e-5, rtol=0)
    assert record.kept_visual[0] == torch.topk(naive, kept_count(end - start, 0.25)).indices.sort().values.tolist()


def test_transprune_drops_double_from_stage_to_stage(deep, prompt):
    assert doubling_fractions(0.125, 3) == [0.875, 0.625, 0.125]
    n = prompt.visual_tokens
    record = generate(deep, prompt, SETTINGS, make_pruner("transprune", ratio=0.25, layers=[1, 2, 3])).record
    counts = [kept_count(n, f) for f in doubling_fractions(0.25, 3)]
    assert record.pruned_at == ["step1/layer1+2+3"] and counts[-1] == kept_count(n, 0.25)
    for forward in record.forwards:
        assert [visual for _, _, visual in forward.layers] == [n, *counts]


# AdaptInfer


def test_adaptinfer_scores_equal_a_naive_eager_reference(deep, deep_eager, prompt):
    pruner = make_pruner("adaptinfer", ratio=0.25, layers=[2])
    capture = ScoreCapture(pruner)
    record = generate(deep, prompt, SETTINGS, pruner).record
    ((start, end),) = prompt.visual_spans
    attention = layer_maps(deep_eager, prompt)[1].mean(dim=0)
    rows = after_image_rows(prompt)
    prior = {j: sum(attention[i, j] + attention[j, i] for i in rows) - attention[j, j] for j in rows}
    naive = torch.tensor([sum(prior[j] * attention[j, v] for j in rows) for v in range(start, end)])
    torch.testing.assert_close(capture.seen[2][0], naive, atol=1e-5, rtol=0)
    assert record.kept_visual[0] == torch.topk(naive, kept_count(end - start, 0.25)).indices.sort().values.tolist()


def test_adaptinfer_keeps_r_to_the_s_over_s_at_each_stage(deep, prompt):
    n = prompt.visual_tokens
    record = generate(deep, prompt, SETTINGS, make_pruner("adaptinfer", ratio=0.25, layers=[1, 3])).record
    assert [visual for _, _, visual in record.forwards[-1].layers] == [
        n,
        kept_count(n, 0.5),
        kept_count(n, 0.5),
        kept_count(n, 0.25),
    ]
    assert make_pruner("adaptinfer").lm_layers(32) == (2, 11, 21)
    assert make_pruner("transprune").lm_layers(32) == tuple(range(6, 13))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("star", {"queries": "question"}, "is not one of"),
        ("star", {"ratio": 0.5, "first_ratio": 0.25}, "keeps fewer tokens than the final ratio"),
        ("star", {"self_attention": "cls"}, "self_attention 'cls' is not one of tower, features"),
        ("transprune", {"ratios": [0.5, 0.75]}, "must not increase"),
        ("transprune", {"queries": "after_image+nope"}, "is not one of"),
        ("adaptinfer", {"ratio": 0.5, "ratios": [0.25]}, "must stay >= ratio 0.5"),
    ],
)
def test_bad_options_are_refused_with_the_choices(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner(name, **options)


@pytest.mark.parametrize("name", ["transprune", "adaptinfer"])
def test_stage_fractions_must_match_the_layers(name):
    with pytest.raises(ValueError, match="ratios gives 1 stage fractions; layers"):
        make_pruner(name, layers=[1, 2, 3], ratios=[0.9]).lm_layers(DEEP_LAYERS)
