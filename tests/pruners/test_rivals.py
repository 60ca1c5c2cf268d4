"""The rival pruners on the three stages: keep-all equals unpruned, scores equal naive references, kept counts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import DEEP_LAYERS
from helpers import layer_maps, page

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.models.make_tiny import make_tiny
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import PruneContext, kept_count
from redvtp_eval.pruners.d3tom import scheduled_count
from redvtp_eval.pruners.dart import dart_keep
from redvtp_eval.pruners.divprune import max_min_diverse

SETTINGS = GenerationSettings(8, 4, 8, stop_strings=())
LAYERS = DEEP_LAYERS


@pytest.fixture(scope="module")
def prompt(deep):
    return deep.prepare("What is the total?", [page((384, 192))], "no_think")


def region_of(prompt) -> list[torch.Tensor]:
    ((start, end),) = prompt.visual_spans
    region = torch.zeros(end - start, dtype=torch.bool)
    region[5:9] = True
    return [region]


KEEP_ALL = [
    ("pooling", {"ratio": 1.0}),
    ("divprune", {"ratio": 1.0}),
    ("oracle", {"ratio": 1.0}),
    ("anti_oracle", {"ratio": 1.0}),
    ("fastv", {"ratio": 1.0}),
    ("fastv", {"ratio": 1.0, "queries": "masked"}),
    ("llada_fastv", {"ratio": 1.0}),
    ("pdrop", {"ratio": 1.0}),
    ("dart", {"ratio": 1.0}),
    ("d3tom", {"ratio": 1.0}),
    ("visionzip", {"ratio": 1.0}),
    ("sparsevlm", {"ratio": 1.0, "layers": [1, 2, 3]}),
    ("sparsevlm", {"ratio": 1.0, "raters": "prompt+masked"}),
]


@pytest.mark.parametrize(("name", "options"), KEEP_ALL)
def test_keeping_every_token_reproduces_the_unpruned_tokens(deep, prompt, name, options):
    unpruned = generate(deep, prompt, SETTINGS)
    pruner = make_pruner(name, **options)
    if pruner.needs_tower_attention:
        prompt = deep.prepare("What is the total?", [page((384, 192))], "no_think", pruner.tower_attention_layer())
    result = generate(deep, prompt, SETTINGS, pruner, region=region_of(prompt))
    assert result.token_ids == unpruned.token_ids
    assert result.record.visual_tokens_after == prompt.visual_tokens
    assert result.record.effective_visual_tokens == unpruned.record.effective_visual_tokens == prompt.visual_tokens


class Capture:
    """Wraps a pruner's in-LM stage to keep what it saw and returned."""

    def __init__(self, pruner):
        self.pruner, self.seen = pruner, []
        original = pruner.in_lm

        def in_lm(context):
            kept = original(context)
            self.seen.append((context, kept))
            return kept

        pruner.in_lm = in_lm


@pytest.mark.parametrize(
    ("name", "queries"), [("fastv", "last_prompt"), ("fastv", "masked"), ("llada_fastv", "masked")]
)
def test_layer_scores_equal_a_naive_eager_reference(deep, deep_eager, prompt, name, queries):
    pruner = make_pruner(name, ratio=0.25, queries=queries)
    capture = Capture(pruner)
    generate(deep, prompt, SETTINGS, pruner)
    ((context, kept),) = capture.seen
    layer = pruner.lm_layers(LAYERS)[0]
    ((start, end),) = prompt.visual_spans
    length = len(prompt.embeds)
    rows = [length - 1] if queries == "last_prompt" else list(range(length, length + SETTINGS.gen_length))
    attention = layer_maps(deep_eager, prompt)[layer - 1]
    naive = torch.zeros(end - start)
    for j in range(start, end):
        naive[j - start] = sum(attention[h, i, j] for h in range(attention.shape[0]) for i in rows)
    naive /= attention.shape[0] * len(rows)
    ours = pruner.layer_scores(context)[0]
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=0)
    assert kept[0].tolist() == torch.topk(naive, kept_count(end - start, 0.25)).indices.sort().values.tolist()


def test_fastv_replays_its_drop_after_layer_k_and_llada_fastv_deletes(deep, prompt):
    n, k = prompt.visual_tokens, kept_count(prompt.visual_tokens, 0.25)
    fastv = generate(deep, prompt, SETTINGS, make_pruner("fastv", ratio=0.25, layer=2)).record
    assert fastv.visual_tokens_after == k and fastv.pruned_at == ["step1/layer2"]
    for forward in fastv.forwards:
        assert [visual for _, _, visual in forward.layers] == [n, n, k, k]
    assert fastv.effective_visual_tokens == (2 * n + 2 * k) / 4
    llada = generate(deep, prompt, SETTINGS, make_pruner("llada_fastv", ratio=0.25)).record
    assert [visual for _, _, visual in llada.forwards[0].layers] == [n, n, k, k]
    assert all([visual for _, _, visual in f.layers] == [k] * 4 for f in llada.forwards[1:])
    assert llada.step_forward[1][0] == llada.step_forward[0][0] - (n - k)


def test_pdrop_keeps_lambda_of_what_is_left_at_each_stage(deep, prompt):
    n = prompt.visual_tokens
    record = generate(deep, prompt, SETTINGS, make_pruner("pdrop", ratio=0.5)).record
    counts = [n, kept_count(n, 0.5)]
    counts.append(kept_count(counts[-1], 0.5))
    counts.append(kept_count(counts[-1], 0.5))
    assert [visual for _, _, visual in record.forwards[-1].layers] == counts
    assert record.visual_tokens_after == counts[-1]


def naive_dart(visual, text, kept, pv, pt):
    norms = [float(sum(abs(x) for x in row)) for row in visual]
    pivots = sorted(range(len(visual)), key=lambda i: -norms[i])[:pv]
    text_norms = [float(sum(abs(x) for x in row)) for row in text]
    vectors = [visual[i] for i in pivots] + [
        text[i] for i in sorted(range(len(text)), key=lambda i: -text_norms[i])[:pt]
    ]
    chosen = set(pivots)
    rest = kept - len(pivots)
    for index, pivot in enumerate(vectors):
        quota = rest // len(vectors) + (1 if index < rest % len(vectors) else 0)
        cos = {j: float(F.cosine_similarity(pivot, visual[j], dim=0)) for j in range(len(visual)) if j not in chosen}
        chosen |= set(sorted(cos, key=cos.get)[:quota])
    return sorted(chosen)


def test_dart_equals_a_naive_loop_and_keeps_the_rule_count(deep, prompt):
    torch.manual_seed(0)
    visual, text = torch.randn(40, 16), torch.randn(7, 16)
    kept, _ = dart_keep(visual, text, 13, 4, 4)
    assert kept.tolist() == naive_dart(visual, text, 13, 4, 4)
    record = generate(deep, prompt, SETTINGS, make_pruner("dart", ratio=0.25)).record
    assert record.visual_tokens_after == kept_count(prompt.visual_tokens, 0.25)
    with pytest.raises(ValueError, match="prefix_lm off"):
        generate(deep, prompt, replace(SETTINGS, prefix_cache=True), make_pruner("dart", ratio=0.25))


def naive_divprune(features, count):
    n = len(features)
    dist = [[1 - float(F.cosine_similarity(features[i], features[j], dim=0)) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: min(dist[i][j] for j in range(n) if j != i))
    chosen = [first]
    while len(chosen) < count:
        candidates = [i for i in range(n) if i not in chosen]
        chosen.append(max(candidates, key=lambda i: min(dist[i][j] for j in chosen)))
    return chosen


def test_divprune_equals_a_naive_loop_per_image(deep):
    torch.manual_seed(1)
    features = torch.randn(30, 8)
    assert max_min_diverse(features, 9).tolist() == naive_divprune(features, 9)
    two = deep.prepare("Compare.", [page(), page(color="gray")], "no_think")
    record = generate(deep, two, SETTINGS, make_pruner("divprune", ratio=0.25)).record
    sizes = [end - start for start, end in two.visual_spans]
    assert [len(kept) for kept in record.kept_visual] == [kept_count(size, 0.25) for size in sizes]
    (start, end) = two.visual_spans[1]
    expected = naive_divprune(two.embeds[start:end], kept_count(end - start, 0.25))
    assert record.kept_visual[1] == sorted(expected)


def test_pooling_averages_each_grid_window_into_its_top_left_token(deep, prompt):
    ((start, end),) = prompt.visual_spans
    grids = prompt.visual_grids[0]
    pruner = make_pruner("pooling", ratio=0.25)
    from redvtp_eval.pruners.base import VisualInput

    tokens = prompt.embeds[start:end]
    reduction = pruner.before_lm(VisualInput([tokens], prompt.embeds[:start], [grids]))
    expected_count = end - start
    for first, rows, cols, stride in grids:
        expected_count -= rows * cols - math.ceil(rows / 2) * math.ceil(cols / 2)
        if stride > cols:
            expected_count -= rows - math.ceil(rows / 2)
    assert len(reduction.kept[0]) == expected_count
    first, rows, cols, stride = grids[-1]
    index = reduction.kept[0].tolist().index(first + 2 * stride + 2)
    window = [first + r * stride + c for r in (2, 3) for c in (2, 3) if r < rows and c < cols]
    torch.testing.assert_close(reduction.values[0][index], tokens[window].mean(dim=0), atol=1e-6, rtol=0)
    record = generate(deep, prompt, SETTINGS, pruner).record
    assert record.visual_tokens_after == expected_count


def test_oracle_keeps_the_region_first_and_anti_oracle_last(deep, prompt):
    region = region_of(prompt)
    inside = set(region[0].nonzero().squeeze(1).tolist())
    oracle = generate(deep, prompt, SETTINGS, make_pruner("oracle", ratio=0.05), region=region).record
    assert inside <= set(oracle.kept_visual[0])
    anti = generate(deep, prompt, SETTINGS, make_pruner("anti_oracle", ratio=0.05), region=region).record
    assert not inside & set(anti.kept_visual[0])
    with pytest.raises(ValueError, match="answer region"):
        generate(deep, prompt, SETTINGS, make_pruner("oracle", ratio=0.5))


def test_in_lm_pruning_with_lavidas_prefix_cache(tmp_path):
    directory = make_tiny(tmp_path / "lavida", family="lavida_llada", layers=LAYERS)
    model = FAMILIES["lavida_llada"].load(directory, dtype="float32", attn_implementation="sdpa")
    prompt = model.prepare("What is the total?", [page((384, 192))])
    settings = GenerationSettings(8, 4, 8, stop_strings=(), prefix_cache=True)
    unpruned = generate(model, prompt, settings)
    same = generate(model, prompt, settings, make_pruner("llada_fastv", ratio=1.0))
    assert same.token_ids == unpruned.token_ids
    n, k = prompt.visual_tokens, kept_count(prompt.visual_tokens, 0.25)
    fastv = generate(model, prompt, settings, make_pruner("fastv", ratio=0.25, queries="masked")).record
    assert [visual for _, _, visual in fastv.forwards[-1].layers] == [n, n, k, k]
    llada = generate(model, prompt, settings, make_pruner("llada_fastv", ratio=0.25)).record
    assert [visual for _, _, visual in llada.forwards[-1].layers] == [k] * 4
    with pytest.raises(ValueError, match="no attention was recorded"):
        generate(model, prompt, settings, make_pruner("fastv", ratio=0.25))


@pytest.mark.parametrize(("name", "options"), [("none", {}), ("fastv", {"ratio": 0.25}), ("redvtp", {"ratio": 0.25})])
def test_the_analytic_flop_model_equals_torch_flop_counter(deep_eager, prompt, name, options):
    """Eager attention, so that every product is an aten matmul the counter sees; one step, so one forward. The
    LM head is counted at the checkpoint's vocabulary after the tokenizer cut (what the network holds)."""
    from torch.utils.flop_counter import FlopCounterMode

    from redvtp_eval.engine.flops import forward_flops

    settings = GenerationSettings(8, 1, 8, stop_strings=())
    with FlopCounterMode(display=False) as counter:
        record = generate(deep_eager, prompt, settings, make_pruner(name, **options)).record
    text = replace_vocab(deep_eager)
    ((forward),) = record.forwards
    assert forward_flops(text, forward.layers, forward.logits, forward.probed) == counter.get_total_flops()


def replace_vocab(model):
    from transformers import PretrainedConfig

    text = PretrainedConfig(**{**model.config.text.to_dict(), "vocab_size": model.network.lm_head.weight.shape[0]})
    text.head_dim = model.config.text.head_dim
    return text


class CaptureSelect:
    """Wraps a pruner's between-steps stage to keep what it saw and returned, step by step."""

    def __init__(self, pruner):
        self.seen = []
        original = pruner.select

        def select(context):
            reduction = original(context)
            self.seen.append((context, reduction))
            return reduction

        pruner.select = select


def recorded_forwards(model, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every step forward's (input embeddings, positions), as the sampler passed them to the model."""
    forwards, original = [], model.logits

    def logits(embeds, positions, *args, **kwargs):
        forwards.append((embeds.clone(), positions.clone()))
        return original(embeds, positions, *args, **kwargs)

    monkeypatch.setattr(model, "logits", logits)
    return forwards


def naive_groups(embeds: torch.Tensor, kept: list[int]) -> dict[int, list[int]]:
    """Each kept token with the other tokens whose most cosine-similar kept token it is."""
    groups = {k: [k] for k in kept}
    for j in range(len(embeds)):
        if j not in groups:
            similarity = [float(F.cosine_similarity(embeds[j], embeds[k], dim=0)) for k in kept]
            groups[kept[similarity.index(max(similarity))]].append(j)
    return groups


def naive_group_means(embeds: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Each kept token's plain mean with its group."""
    groups = naive_groups(embeds, kept)
    return torch.stack([embeds[groups[k]].mean(dim=0) for k in kept])


D3TOM_SETTINGS = GenerationSettings(8, 4, 8, stop_strings=())


def test_d3tom_scores_equal_a_naive_eager_reference_at_every_step(deep, deep_eager, prompt, monkeypatch):
    """Step by step, the forward the sampler ran (merged embeddings, renumbered positions) is rerun on eager
    attention, and the score is the attention from the rows that step decoded, looped over layers, heads, rows."""
    pruner = make_pruner("d3tom", ratio=0.25)
    capture = CaptureSelect(pruner)
    forwards = recorded_forwards(deep, monkeypatch)
    generate(deep, prompt, D3TOM_SETTINGS, pruner)
    assert [context.step for context, _ in capture.seen] == [1, 2, 3]
    for context, _ in capture.seen:
        embeds, positions = forwards[context.step - 1]
        maps = []
        hooks = [
            layer.self_attn.register_forward_hook(lambda module, args, output: maps.append(output[1][0]))
            for layer in deep_eager.network.model.layers
        ]
        with torch.no_grad():
            deep_eager.logits(embeds, positions, context.response)
        for hook in hooks:
            hook.remove()
        ((start, end),) = context.visual_spans
        naive = torch.zeros(end - start)
        rows = context.decoded.tolist()
        assert rows
        for attention in maps:
            for h in range(attention.shape[0]):
                for i in rows:
                    naive += attention[h, i, start:end]
        naive /= len(maps) * maps[0].shape[0] * len(rows)
        torch.testing.assert_close(pruner.scores(context)[0], naive, atol=1e-5, rtol=0)


def test_d3tom_kept_counts_follow_the_schedule(deep, prompt):
    n = prompt.visual_tokens
    record = generate(deep, prompt, D3TOM_SETTINGS, make_pruner("d3tom", ratio=0.25)).record
    # Window: after steps 1..3 of 4 (S = 3); n_k = max(int(N·r), int(N·r^(k/3))).
    expected = [n] + [max(int(n * 0.25), int(n * 0.25 ** (k / 3))) for k in (1, 2, 3)]
    assert [forward.layers[0][2] for forward in record.forwards] == expected[:4]
    assert record.visual_tokens_after == expected[3] == kept_count(n, 0.25)
    assert record.pruned_at == ["after_step1", "after_step2", "after_step3"]
    window = generate(deep, prompt, D3TOM_SETTINGS, make_pruner("d3tom", ratio=0.5, prune_after_step=2, merge_steps=1))
    assert [forward.layers[0][2] for forward in window.record.forwards] == [
        n,
        n,
        kept_count(n, 0.5),
        kept_count(n, 0.5),
    ]
    assert window.record.pruned_at == ["after_step2"]
    two = deep.prepare("Compare.", [page(), page(color="gray")], "no_think")
    sizes = [end - start for start, end in two.visual_spans]
    record = generate(deep, two, D3TOM_SETTINGS, make_pruner("d3tom", ratio=0.25)).record
    assert [len(kept) for kept in record.kept_visual] == [kept_count(size, 0.25) for size in sizes]


def test_d3tom_merges_each_group_into_its_kept_token_as_a_plain_mean(deep, prompt):
    pruner = make_pruner("d3tom", ratio=0.25, keep_positions=True)
    capture = CaptureSelect(pruner)
    generate(deep, prompt, D3TOM_SETTINGS, pruner)
    for (context, reduction), (after, _) in zip(capture.seen, capture.seen[1:] + [(None, None)]):
        ((start, end),) = context.visual_spans
        kept = reduction.kept[0].tolist()
        expected = naive_group_means(context.embeds[start:end], kept)
        torch.testing.assert_close(reduction.values[0], expected, atol=1e-6, rtol=0)
        if after is not None:  # the next step's forward ran on the merged values, at the kept tokens' places
            ((start, end),) = after.visual_spans
            torch.testing.assert_close(after.embeds[start:end], expected, atol=1e-6, rtol=0)
            assert after.original_index[0].tolist() == context.original_index[0][kept].tolist()


def test_d3tom_skips_a_step_that_decoded_nothing_and_catches_up(deep):
    """A synthetic context: two images of 10 and 6 tokens in a 22-token prompt, a 4-step plan."""
    torch.manual_seed(2)
    embeds, spans = torch.randn(22, 8), [(2, 12), (14, 20)]
    columns = torch.rand(3, 16)
    response = torch.arange(22, 25)

    def context(step, decoded):
        return PruneContext(
            step=step,
            visual_spans=spans,
            masked=response[len(decoded) :],
            decoded=decoded,
            response=response,
            prompt_text=torch.tensor([0, 1, 12, 13, 20, 21]),
            attention=lambda queries: columns[queries - 22],
            embeds=embeds,
            original_sizes=[10, 6],
            total_steps=4,
        )

    pruner = make_pruner("d3tom", ratio=0.25)
    assert [pruner.acts_after(step, 4) for step in (1, 2, 3, 4)] == [True, True, True, False]
    assert pruner.select(context(2, torch.zeros(0, dtype=torch.long))) is None
    reduction = pruner.select(context(2, response[:2]))
    counts = [scheduled_count(10, 0.25, 2, 3), scheduled_count(6, 0.25, 2, 3)]
    assert [len(kept) for kept in reduction.kept] == counts == [3, 2]
    for (start, end), kept, values, score in zip(
        spans, reduction.kept, reduction.values, columns[:2].mean(0).split([10, 6])
    ):
        assert kept.tolist() == sorted(torch.topk(score, len(kept)).indices.tolist())
        torch.testing.assert_close(values, naive_group_means(embeds[start:end], kept.tolist()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["lavida_llada", "lavida_dream"])
def test_d3tom_on_lavida_merges_the_tokens_and_their_prefix_cache_entries(lavida_models, family, monkeypatch):
    """Uncached, the merged tokens leave every later forward; with the prefix cache their cached keys/values (every
    layer) are merged into the kept token's as the plain mean of its group, the groups the embeddings' own."""
    model = lavida_models[family][0]
    prompt = model.prepare("What is the total?", [page((384, 192))])
    n, length = prompt.visual_tokens, len(prompt.embeds)
    counts = [max(int(n * 0.25), int(n * 0.25 ** (k / 3))) for k in (1, 2, 3)]
    unpruned = generate(model, prompt, D3TOM_SETTINGS)
    assert generate(model, prompt, D3TOM_SETTINGS, make_pruner("d3tom", ratio=1.0)).token_ids == unpruned.token_ids
    record = generate(model, prompt, D3TOM_SETTINGS, make_pruner("d3tom", ratio=0.25)).record
    assert [forward.layers[0][2] for forward in record.forwards] == [n] + counts

    cached = replace(D3TOM_SETTINGS, prefix_cache=True)
    assert generate(model, prompt, cached, make_pruner("d3tom", ratio=1.0)).token_ids == (
        generate(model, prompt, cached).token_ids
    )
    entries, logits = [], model.logits

    def spy(*args, cache=None, **kwargs):
        entries.append([(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)])
        return logits(*args, cache=cache, **kwargs)

    monkeypatch.setattr(model, "logits", spy)
    pruner = make_pruner("d3tom", ratio=0.25)
    capture = CaptureSelect(pruner)
    generate(model, prompt, cached, pruner)
    assert [layers[0][0].shape[2] for layers in entries] == [length] + [length - n + count for count in counts]
    for (context, reduction), before, after in zip(capture.seen, entries, entries[1:]):
        ((start, end),) = context.visual_spans
        kept = reduction.kept[0].tolist()
        groups = naive_groups(context.embeds[start:end], kept)
        for (keys, values), (merged_keys, merged_values) in zip(before, after):
            for old, new in ((keys, merged_keys), (values, merged_values)):
                span = old[:, :, start:end]
                expected = torch.stack([span[:, :, groups[k]].mean(dim=2) for k in kept], dim=2)
                torch.testing.assert_close(new[:, :, start : start + len(kept)], expected, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(new[:, :, :start], old[:, :, :start])
