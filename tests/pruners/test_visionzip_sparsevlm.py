"""VisionZip (vision-tower attention, before the LM) and SparseVLM (text raters, inside the LM): naive references,
kept counts and merged values, on LLaDA-V and both LaViDa families, with one and several images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LAVIDA_FAMILIES
from helpers import page
from test_rivals import SETTINGS, Capture, layer_maps

from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import kept_count
from redvtp_eval.pruners.sparsevlm import density_peak_clusters, recycled_count, sparsify, text_raters
from redvtp_eval.pruners.visionzip import visionzip_reduce

QUESTION = "What is the total?"


def prepared(model, images, pruner=None):
    layer = pruner.tower_attention_layer() if pruner is not None else None
    think = "no_think" if model.__class__.__name__ == "LladaV" else None
    return model.prepare(QUESTION, images, think, tower_layer=layer)


# VisionZip: the tower's attention, mapped onto the visual tokens.


def naive_received(model, pixels, layer=-1):
    """Per crop, per patch: the attention it receives at tower ``layer``, recomputed from the layer's own q/k
    weights on the layer's input, softmax by hand, averaged over heads and queries with explicit loops."""
    siglip = model.network.model.vision_tower.vision_tower["vision_model"]
    attention = siglip.encoder.layers[layer].self_attn
    inputs = []
    handle = attention.register_forward_hook(
        lambda module, args, kwargs, out: inputs.append(kwargs["hidden_states"]), with_kwargs=True
    )
    with torch.no_grad():
        siglip.encoder(inputs_embeds=siglip.embeddings(pixels))
    handle.remove()
    (x,) = inputs
    heads, dim = attention.num_heads, attention.head_dim
    out = torch.zeros(x.shape[0], x.shape[1])
    with torch.no_grad():
        for crop in range(x.shape[0]):
            q = attention.q_proj(x[crop]).view(-1, heads, dim)
            k = attention.k_proj(x[crop]).view(-1, heads, dim)
            for h in range(heads):
                logits = (q[:, h] @ k[:, h].T) * dim**-0.5
                probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
                for i in range(len(probs)):
                    out[crop] += probs[i]
            out[crop] /= heads * x.shape[1]
    return out


def naive_bilinear(scores, unit, side):
    """(unit²,) scores of one crop → (side²,) by bilinear interpolation (half-pixel centres), explicit loops."""
    grid = scores.view(unit, unit)
    scale = unit / side

    def taps(i):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        low = int(math.floor(src))
        high = min(low + 1, unit - 1)
        return low, high, src - low

    out = torch.zeros(side, side)
    for r in range(side):
        r0, r1, wr = taps(r)
        for c in range(side):
            c0, c1, wc = taps(c)
            top = (1 - wc) * grid[r0, c0] + wc * grid[r0, c1]
            bottom = (1 - wc) * grid[r1, c0] + wc * grid[r1, c1]
            out[r, c] = (1 - wr) * top + wr * bottom
    return out.flatten()


def naive_token_scores(model, images):
    """Per image, the naive score of every visual token: its source is found by matching its feature to the
    (pooled) crop features, so the reference does not reuse the model's packing; newline tokens score 0."""
    pixels, layout = model.image_crops(images)
    received = naive_received(model, pixels)
    with torch.no_grad():
        features = model.network.encode_crops(pixels)
    stride = model.config.crop_pool_stride
    if stride and layout.grid is not None:
        unit = math.isqrt(features.shape[1])
        side = math.ceil(unit / stride)
        received = torch.stack([naive_bilinear(crop, unit, side) for crop in received])
        grid = features.view(len(features), unit, unit, -1).permute(0, 3, 1, 2)
        features = F.interpolate(grid, size=[side, side], mode="bilinear").permute(0, 2, 3, 1).flatten(1, 2)
    prompt = prepared(model, images)
    newline = model.network.model.image_newline
    sources, scores = features.flatten(0, 1), received.flatten()
    out = []
    for start, end in prompt.visual_spans:
        tokens = prompt.embeds[start:end]
        image_scores = torch.zeros(end - start)
        for t in range(end - start):
            if torch.equal(tokens[t], newline):
                continue
            distance = (sources - tokens[t]).norm(dim=-1)
            assert distance.min() < 1e-5
            image_scores[t] = scores[distance.argmin()]
        out.append(image_scores)
    return out, prompt


@pytest.mark.parametrize("case", ["llada_v one image", "llada_v two images", "lavida_llada", "lavida_dream"])
def test_tower_attention_equals_a_naive_reference_per_visual_token(deep, lavida_models, case):
    if case.startswith("llada_v"):
        model = deep
        images = [page((384, 192))] if case.endswith("one image") else [page(), page((300, 200), color="gray")]
    else:
        model = lavida_models[case][0]
        images = [page((384, 192))]
    naive, plain = naive_token_scores(model, images)
    prompt = model.prepare(QUESTION, images, "no_think" if case.startswith("llada_v") else None, tower_layer=-1)
    assert plain.tower_attention is None
    torch.testing.assert_close(prompt.embeds, plain.embeds, atol=0, rtol=0)
    assert [len(s) for s in prompt.tower_attention] == [end - start for start, end in prompt.visual_spans]
    for ours, reference in zip(prompt.tower_attention, naive):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def naive_visionzip(features, scores, kept, contextual, merge="mean"):
    n = len(features)
    order = sorted(range(n), key=lambda i: -float(scores[i]))
    dominant = set(order[: kept - contextual])
    remaining = [i for i in range(n) if i not in dominant]
    step = max(1, len(remaining) // contextual)
    targets = [remaining[i] for i in range(0, len(remaining), step)][:contextual]
    values = {i: features[i] for i in dominant}
    groups = {t: [t] for t in targets}
    for i in remaining:
        if i in targets:
            continue
        cos = [float(F.cosine_similarity(features[i], features[t], dim=0)) for t in targets]
        groups[targets[cos.index(max(cos))]].append(i)
    for t, members in groups.items():
        if merge == "mean":
            values[t] = sum(features[i] for i in members) / len(members)
        else:
            others = members[1:]
            values[t] = features[t] + (sum(features[i] for i in others) / len(others) if others else 0)
    kept_indices = sorted(values)
    return kept_indices, torch.stack([values[i] for i in kept_indices])


@pytest.mark.parametrize("merge", ["mean", "visionzip"])
def test_visionzip_keeps_dominant_and_contextual_tokens_as_a_naive_loop(merge):
    torch.manual_seed(2)
    features, scores = torch.randn(60, 8), torch.rand(60)
    kept, values, group = visionzip_reduce(features, scores, 15, 4, merge)
    expected_kept, expected_values = naive_visionzip(features, scores, 15, 4, merge)
    assert kept.tolist() == expected_kept
    torch.testing.assert_close(values, expected_values, atol=1e-6, rtol=0)
    assert (group >= 0).sum() == 60 - 11


@pytest.mark.parametrize(
    ("ratio", "dominant", "contextual"), [(64 / 576, 54, 10), (128 / 576, 108, 20), (1 / 3, 162, 30)]
)
def test_visionzip_default_split_is_the_official_one(ratio, dominant, contextual):
    pruner = make_pruner("visionzip", ratio=ratio)
    assert pruner.counts(576) == (dominant, contextual)


def test_visionzip_through_the_sampler_keeps_the_rule_count_per_image(deep):
    pruner = make_pruner("visionzip", ratio=0.25)
    images = [page(), page((300, 200), color="gray")]
    prompt = prepared(deep, images, pruner)
    record = generate(deep, prompt, SETTINGS, pruner).record
    sizes = [end - start for start, end in prompt.visual_spans]
    assert [len(kept) for kept in record.kept_visual] == [kept_count(size, 0.25) for size in sizes]
    assert record.pruned_at == ["before_lm"]
    (start, end) = prompt.visual_spans[1]
    dominant, contextual = pruner.counts(end - start)
    expected, _ = naive_visionzip(
        prompt.embeds[start:end], prompt.tower_attention[1], dominant + contextual, contextual
    )
    assert record.kept_visual[1] == expected
    with pytest.raises(ValueError, match="tower_layer=pruner.tower_attention_layer"):
        generate(deep, prepared(deep, images), SETTINGS, pruner)


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
def test_visionzip_on_lavida_with_and_without_the_prefix_cache(lavida_models, family):
    model = lavida_models[family][0]
    pruner = make_pruner("visionzip", ratio=0.25)
    prompt = prepared(model, [page((384, 192))], pruner)
    for cache in (False, True):
        settings = GenerationSettings(8, 4, 8, stop_strings=(), prefix_cache=cache)
        record = generate(model, prompt, settings, pruner).record
        assert record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)
        keep_all = make_pruner("visionzip", ratio=1.0)
        assert generate(model, prompt, settings, keep_all).token_ids == generate(model, prompt, settings).token_ids


# SparseVLM: raters, layer scores, progressive counts and recycling.


def naive_raters(visual, text):
    relevance = []
    for t in range(len(text)):
        total = 0.0
        for v in range(len(visual)):
            logits = [float(visual[v] @ text[u]) for u in range(len(text))]
            top = max(logits)
            total += math.exp(logits[t] - top) / sum(math.exp(x - top) for x in logits)
        relevance.append(total / len(visual))
    mean = sum(relevance) / len(relevance)
    return [t for t in range(len(text)) if relevance[t] > mean]


def test_text_raters_equal_a_naive_loop():
    torch.manual_seed(3)
    visual, text = torch.randn(20, 6), torch.randn(9, 6)
    assert text_raters(visual, text).tolist() == naive_raters(visual, text)


@pytest.mark.parametrize("raters", ["prompt", "masked", "prompt+masked"])
def test_sparsevlm_layer_scores_equal_a_naive_eager_reference(deep, deep_eager, raters):
    prompt = prepared(deep, [page((384, 192))])
    pruner = make_pruner("sparsevlm", ratio=0.25, layers=[2], raters=raters)
    capture = Capture(pruner)
    generate(deep, prompt, SETTINGS, pruner)
    ((context, reduction),) = capture.seen
    ((start, end),) = prompt.visual_spans
    length = len(prompt.embeds)
    text_positions = [i for i in range(length) if not start <= i < end]
    after = [i for i in text_positions if i >= end]
    chosen = naive_raters(prompt.embeds[start:end], prompt.embeds[after])
    rows = [after[i] for i in chosen] if raters != "masked" else []
    if raters != "prompt":
        rows += list(range(length, length + SETTINGS.gen_length))
    attention = layer_maps(deep_eager, prompt)[1]
    naive = torch.zeros(end - start)
    for j in range(start, end):
        naive[j - start] = sum(float(attention[h, i, j]) for h in range(attention.shape[0]) for i in rows)
    naive /= attention.shape[0] * len(rows)
    torch.testing.assert_close(pruner.layer_scores(context)[0], naive, atol=1e-5, rtol=0)
    budget = kept_count(end - start, 0.25)
    merged = recycled_count(end - start - budget, budget)
    top = set(torch.topk(naive, budget - merged).indices.tolist())
    assert top <= set(reduction.kept[0].tolist()) and len(reduction.kept[0]) == budget


def naive_density_peaks(x, clusters):
    n, d = x.shape
    dist = [[float((x[i] - x[j]).norm()) / d**0.5 for j in range(n)] for i in range(n)]
    density = [math.exp(-sum(v**2 for v in sorted(dist[i])[:clusters]) / clusters) for i in range(n)]
    biggest = max(max(row) for row in dist)
    delta = [min([dist[i][j] for j in range(n) if density[j] > density[i]] or [biggest]) for i in range(n)]
    score = [delta[i] * density[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: -score[i])[:clusters]
    assign = [min(range(clusters), key=lambda c: dist[centres[c]][i]) for i in range(n)]
    for c, i in enumerate(centres):
        assign[i] = c
    return centres, assign


def test_density_peak_clusters_and_recycled_means_equal_naive_loops():
    torch.manual_seed(4)
    x = torch.randn(25, 5)
    centres, assign = density_peak_clusters(x, 3)
    expected_centres, expected_assign = naive_density_peaks(x, 3)
    assert centres.tolist() == expected_centres and assign.tolist() == expected_assign

    scores, hidden = torch.rand(120), torch.randn(120, 5)
    kept, values, sources = sparsify(scores, 30, hidden)
    merged = recycled_count(90, 30)
    assert merged == 3 and len(kept) == 30
    for slot, index in enumerate(kept.tolist()):
        members = [i for i in range(120) if int(sources[i]) == slot]
        assert index in members
        expected = sum(hidden[i] for i in members) / len(members)
        torch.testing.assert_close(values[slot], expected, atol=1e-6, rtol=0)
    rest = [i for i in range(120) if i not in set(torch.topk(scores, 27).indices.tolist())]
    pool = sorted(rest, key=lambda i: -float(scores[i]))[: int(0.3 * len(rest)) + 1]
    assert sorted(i for i in range(120) if int(sources[i]) >= 0) == sorted(
        set(pool) | set(torch.topk(scores, 27).indices.tolist())
    )


def test_sparsevlm_drops_progressively_per_image_and_replays_its_merges(deep):
    images = [page(), page((300, 200), color="gray")]
    prompt = prepared(deep, images)
    pruner = make_pruner("sparsevlm", ratio=0.25, layers=[1, 2, 3])
    record = generate(deep, prompt, SETTINGS, pruner).record
    sizes = [end - start for start, end in prompt.visual_spans]
    fractions = [0.25 ** (1 / 3), 0.25 ** (2 / 3), 0.25]
    counts = [sum(sizes)] + [sum(kept_count(size, f) for size in sizes) for f in fractions]
    for forward in record.forwards:
        assert [visual for _, _, visual in forward.layers] == counts
    assert [len(kept) for kept in record.kept_visual] == [kept_count(size, 0.25) for size in sizes]
    assert record.pruned_at == ["step1/layer1+2+3"]


def test_a_replayed_step_writes_the_cluster_means_of_its_own_hidden_states(deep):
    prompt = prepared(deep, [page((384, 192))])
    pruner = make_pruner("sparsevlm", ratio=0.25, layers=[2])
    capture = Capture(pruner)
    layers = deep.network.model.layers
    outputs, inputs = [], []
    hooks = [
        layers[1].register_forward_hook(lambda module, args, kwargs, out: outputs.append(out[0]), with_kwargs=True),
        layers[2].register_forward_pre_hook(lambda module, args, kwargs: inputs.append(args[0][0]), with_kwargs=True),
    ]
    try:
        generate(deep, prompt, GenerationSettings(8, 2, 8, stop_strings=()), pruner)
    finally:
        for hook in hooks:
            hook.remove()
    ((context, reduction),) = capture.seen
    ((start, end),) = prompt.visual_spans
    kept, sources = reduction.kept[0], reduction.sources[0]
    merged_slots = [slot for slot in range(len(kept)) if int((sources == slot).sum()) > 1]
    assert merged_slots
    for step in (0, 1):
        before, after = outputs[step], inputs[step]
        for slot in merged_slots:
            members = (sources == slot).nonzero().squeeze(1)
            torch.testing.assert_close(after[start + slot], before[start + members].mean(dim=0), atol=1e-5, rtol=0)
    assert not torch.allclose(inputs[0][start : start + len(kept)], inputs[1][start : start + len(kept)])


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
def test_sparsevlm_on_lavida_and_its_prefix_cache_rules(lavida_models, family):
    model = lavida_models[family][0]
    prompt = prepared(model, [page((384, 192))])
    plain = GenerationSettings(8, 4, 8, stop_strings=())
    record = generate(model, prompt, plain, make_pruner("sparsevlm", ratio=0.25)).record
    assert record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)
    cached = GenerationSettings(8, 4, 8, stop_strings=(), prefix_cache=True)
    same = generate(model, prompt, cached, make_pruner("sparsevlm", ratio=1.0, raters="masked", recycle=False))
    assert same.token_ids == generate(model, prompt, cached).token_ids
    pruned = generate(model, prompt, cached, make_pruner("sparsevlm", ratio=0.25, raters="masked", recycle=False))
    assert pruned.record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)
    with pytest.raises(ValueError, match="prefix_lm off"):
        generate(model, prompt, cached, make_pruner("sparsevlm", ratio=0.25, raters="masked"))
    with pytest.raises(ValueError, match="prompt rows"):
        generate(model, prompt, cached, make_pruner("sparsevlm", ratio=0.25, recycle=False))
