"""Fast-dLLM's prefix and dual caches in the one sampler loop: what each forward runs, and when it is exact."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import page

from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.models.llada_v import load_llada_v
from redvtp_eval.models.make_tiny import make_tiny
from redvtp_eval.pruners import PRUNERS, make_pruner

SETTINGS = GenerationSettings(16, 8, 8, stop_strings=())
"""Two blocks of 8 tokens, 4 steps each."""
MODES = ("prefix", "dual")


@pytest.fixture(scope="module")
def prompt(tiny):
    return tiny.prepare("What is the total?", [page((384, 192))], "no_think")


@pytest.mark.parametrize("mode", MODES)
def test_a_refresh_at_every_step_is_the_uncached_loop(tiny, prompt, mode):
    uncached = generate(tiny, prompt, SETTINGS)
    cached = generate(tiny, prompt, replace(SETTINGS, fast_dllm=mode, refresh_every=1))
    assert cached.token_ids == uncached.token_ids
    assert cached.record.step_forward == uncached.record.step_forward


@pytest.mark.parametrize("mode", MODES)
def test_each_block_runs_one_full_forward_then_its_window_against_the_cache(tiny, prompt, mode):
    length = prompt.embeds.shape[0] + 16
    record = generate(tiny, prompt, replace(SETTINGS, fast_dllm=mode)).record
    window = {"prefix": [16, 8], "dual": [8, 8]}[mode]  # rows of the cached steps in blocks 1 and 2
    expected = []
    for rows in window:
        expected += [(length, length)] + [(rows, length)] * 3
    assert record.step_forward == expected
    # the LM head runs on the block's masked positions only: 8, then 2 fewer after each of the 4 steps
    assert [forward.logits for forward in record.forwards] == [8, 6, 4, 2] * 2


@pytest.mark.parametrize("mode", MODES)
def test_with_one_layer_the_cache_is_exact(tmp_path, mode):
    """One layer: a position's keys/values depend on its own embedding only, and the cached ones (the prompt, the
    committed tokens before the block, the masks after it) do not change until their block is refreshed."""
    model = load_llada_v(make_tiny(tmp_path / "one", seed=1, layers=1), dtype="float32")
    one = model.prepare("What is the total?", [page((384, 192))], "no_think")
    uncached = generate(model, one, SETTINGS)
    assert generate(model, one, replace(SETTINGS, fast_dllm=mode)).token_ids == uncached.token_ids


@pytest.mark.parametrize("mode", MODES)
def test_ratio_one_with_the_cache_is_the_unpruned_cached_run(tiny, prompt, mode):
    settings = replace(SETTINGS, fast_dllm=mode)
    unpruned = generate(tiny, prompt, settings)
    kept_all = generate(tiny, prompt, settings, make_pruner("redvtp", ratio=1.0))
    assert kept_all.token_ids == unpruned.token_ids


@pytest.mark.parametrize("mode", MODES)
def test_pruning_after_step_one_shrinks_every_later_forward_and_keeps_positions(tiny, prompt, mode):
    settings = replace(SETTINGS, fast_dllm=mode)
    record = generate(tiny, prompt, settings, make_pruner("redvtp", ratio=0.25)).record
    visual = prompt.visual_tokens
    kept = max(1, int(visual * 0.25))
    assert record.visual_tokens_after == kept
    length = prompt.embeds.shape[0] + 16
    keys = [forward[1] for forward in record.step_forward]
    assert keys[0] == length and all(k == length - visual + kept for k in keys[1:])


def test_fast_dllm_refuses_what_it_cannot_follow(tiny, prompt):
    with pytest.raises(ValueError, match="two caches: choose one"):
        GenerationSettings(fast_dllm="prefix", prefix_cache=True)
    with pytest.raises(ValueError, match="fast_dllm 'triple' is not one of none, prefix, dual"):
        GenerationSettings(fast_dllm="triple")
    late = make_pruner("fastv", layer=1)
    late.in_lm_step = 2
    with pytest.raises(ValueError, match="acts inside the LM at step 2, which runs against Fast-dLLM's cache"):
        generate(tiny, prompt, replace(SETTINGS, fast_dllm="prefix"), late)
    both = make_pruner("fastv", layer=1)
    both.select = lambda context: [torch.arange(0, end - start, 2) for start, end in context.visual_spans]
    with pytest.raises(ValueError, match="in_lm_persist='layers'\\) and between steps"):
        generate(tiny, prompt, replace(SETTINGS, fast_dllm="dual"), both)
    with pytest.raises(ValueError, match="in a Fast-dLLM window step only the window's"):
        # RedVTP's queries are every masked position; the dual cache's window is the block alone
        generate(
            tiny, prompt, replace(SETTINGS, fast_dllm="dual"), make_pruner("redvtp", ratio=0.5, prune_after_step=2)
        )


@pytest.mark.parametrize("mode", MODES)
def test_a_window_step_probes_the_windows_rows_against_the_cache(tmp_path, mode):
    """With one layer the cache is exact, so attention read in a window step (step 2: the prefix cache's window is
    everything from the block on, the dual cache's the block) is the uncached forward's: pruning after it keeps the
    same tokens and answers the same. RedVTP asks every masked row (in the prefix window); D³ToM the rows step 2
    decoded (in the block, so in either window): its one merge, after step 2, keeps the uncached run's tokens (its
    merged cache entries are means of keys, not keys of means, so later steps may differ)."""
    model = load_llada_v(make_tiny(tmp_path / "one", seed=1, layers=1), dtype="float32")
    one = model.prepare("What is the total?", [page((384, 192))], "no_think")
    three_blocks = GenerationSettings(24, 12, 8, stop_strings=())  # in block 1 the dual cache holds 16 entries after it
    cached = replace(three_blocks, fast_dllm=mode)
    if mode == "prefix":
        redvtp = {"ratio": 0.25, "prune_after_step": 2, "keep_positions": True}
        uncached = generate(model, one, three_blocks, make_pruner("redvtp", **redvtp))
        windowed = generate(model, one, cached, make_pruner("redvtp", **redvtp))
        assert windowed.record.pruned_after_step == 2 and windowed.record.kept_visual == uncached.record.kept_visual
        assert windowed.token_ids == uncached.token_ids
    after_two = {"ratio": 0.25, "prune_after_step": 2, "merge_steps": 1, "keep_positions": True}
    uncached = generate(model, one, three_blocks, make_pruner("d3tom", **after_two))
    windowed = generate(model, one, cached, make_pruner("d3tom", **after_two))
    assert windowed.record.pruned_at == uncached.record.pruned_at == ["after_step2"]
    assert windowed.record.kept_visual == uncached.record.kept_visual


def test_d3tom_merges_in_window_steps_and_the_cache_follows(deep):
    """D³ToM merges after steps 1–7 of 8 (two blocks): every later forward, full or window, has the merged count of
    visual keys, and the cached entries shrink with them."""
    model, one = deep
    n, text = one.visual_tokens, one.embeds.shape[0] - one.visual_tokens
    counts = [max(int(n * 0.25), int(n * 0.25 ** (k / 7))) for k in range(1, 8)]
    for mode, window in (("prefix", [16, 8]), ("dual", [8, 8])):
        record = generate(model, one, replace(SETTINGS, fast_dllm=mode), make_pruner("d3tom", ratio=0.25)).record
        assert record.pruned_at == [f"after_step{k}" for k in range(1, 8)]
        assert [forward.layers[0][2] for forward in record.forwards] == [n] + counts
        for step, (rows, keys) in enumerate(record.step_forward):
            visual = n if step == 0 else counts[step - 1]
            assert keys == text + visual + 16
            assert rows == (keys if step % 4 == 0 else window[step // 4])


IN_LM = {"fastv": {"layer": 2}, "llada_fastv": {"layer": 2}, "pdrop": {}, "sparsevlm": {}}
"""In-LM pruners on a four-layer model: FastV, PDrop and SparseVLM replay their drops (``in_lm_persist="layers"``;
PDrop after layers 1, 2 and 3; SparseVLM also merges, reading hidden states and prompt rows' attention),
LLaDA-FastV's leave the sequence (``"sequence"``)."""


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    model = load_llada_v(make_tiny(tmp_path_factory.mktemp("deep"), seed=2, layers=4), dtype="float32")
    return model, model.prepare("What is the total?", [page((384, 192))], "no_think")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", IN_LM)
def test_an_in_lm_pruner_refreshed_every_step_is_the_uncached_run(deep, mode, name):
    model, one = deep
    pruner = make_pruner(name, ratio=0.25, **IN_LM[name])
    uncached = generate(model, one, SETTINGS, pruner)
    cached = generate(model, one, replace(SETTINGS, fast_dllm=mode, refresh_every=1), pruner)
    assert uncached.record.visual_tokens_after < one.visual_tokens
    assert cached.token_ids == uncached.token_ids
    assert [f.layers for f in cached.record.forwards] == [f.layers for f in uncached.record.forwards]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", IN_LM)
def test_an_in_lm_pruner_keeping_every_token_is_the_unpruned_cached_run(deep, mode, name):
    model, one = deep
    settings = replace(SETTINGS, fast_dllm=mode)
    assert generate(model, one, settings, make_pruner(name, ratio=1.0, **IN_LM[name])).token_ids == (
        generate(model, one, settings).token_ids
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["fastv", "llada_fastv"])
def test_each_layer_of_the_cache_holds_the_rows_it_ran(deep, mode, name):
    """Layers up to K see every visual key (FastV's in every forward, LLaDA-FastV's in step 1's only), the later
    ones the kept; window steps attend to those entries, so their keys count the same visual tokens per layer."""
    model, one = deep
    record = generate(model, one, replace(SETTINGS, fast_dllm=mode), make_pruner(name, ratio=0.25, layer=2)).record
    visual, kept = one.visual_tokens, record.visual_tokens_after
    text = one.embeds.shape[0] - visual
    assert kept == max(1, int(visual * 0.25))
    window = {"prefix": [16, 8], "dual": [8, 8]}[mode]  # rows of the cached steps in blocks 1 and 2
    for step, forward in enumerate(record.forwards):
        full = step % 4 == 0  # each block's first step
        all_visual = name == "fastv" or step == 0
        assert [layer[2] for layer in forward.layers] == [visual if all_visual else kept] * 2 + [kept] * 2
        for rows, keys, seen in forward.layers:
            assert keys - seen == text + 16  # the text and the whole response, as rows or as cached entries
            assert rows == (keys if full else window[step // 4])


@pytest.mark.parametrize("mode", MODES)
def test_parallel_decoding_composes_with_the_cache(tiny, prompt, mode):
    """Threshold 1.0 commits one token a step (no float64 probability of a random model reaches 1), so it runs
    the same steps as the fixed schedule of one token a step with the same cache."""
    one_a_step = replace(SETTINGS, steps=16, fast_dllm=mode)
    fixed = generate(tiny, prompt, one_a_step)
    parallel = generate(tiny, prompt, replace(one_a_step, threshold=1.0))
    assert parallel.token_ids == fixed.token_ids
    assert parallel.record.step_forward == fixed.record.step_forward


def test_llada_v_gen_kwargs_reach_the_cache_and_threshold_settings():
    from redvtp_eval.engine.families import llada_v_settings

    plain, _ = llada_v_settings({"gen_length": 32, "steps": 16, "block_length": 32})
    assert (plain.fast_dllm, plain.refresh_every, plain.threshold) == ("none", None, None)
    fast, _ = llada_v_settings(
        {
            "gen_length": 32,
            "steps": 16,
            "block_length": 8,
            "fast_dllm": "dual",
            "refresh_every": "2",
            "confidence_threshold": "0.9",
        }
    )
    assert (fast.fast_dllm, fast.refresh_every, fast.threshold) == ("dual", 2, 0.9)
    assert llada_v_settings({"confidence_threshold": "None"})[0].threshold is None


EVERY_PRUNER = [name for name in PRUNERS if name not in ("none", "oracle", "anti_oracle", "lvpruning", "rfm_dip")]
"""Every registered pruner that runs on a bare tiny model: the oracles need the toy tasks' answer region and the
trained ones modules of the toy's dimensions (``tests/pruners/test_lvpruning_rfm_dip.py``)."""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", EVERY_PRUNER)
def test_every_pruner_composes_with_each_cache(deep, mode, name):
    """Keeping every token is the unpruned cached run, and at r = 0.25 a refresh at every step is the uncached run
    with kept positions (the cache keeps them); the run prunes, so the equality is not the unpruned one."""
    model, _ = deep
    tower_layer = make_pruner(name).tower_attention_layer()
    one = model.prepare("What is the total?", [page((384, 192))], "no_think", tower_layer=tower_layer)
    cached = replace(SETTINGS, fast_dllm=mode)
    assert (
        generate(model, one, cached, make_pruner(name, ratio=1.0)).token_ids == generate(model, one, cached).token_ids
    )
    uncached = generate(model, one, SETTINGS, make_pruner(name, ratio=0.25, keep_positions=True))
    refreshed = generate(
        model, one, replace(cached, refresh_every=1), make_pruner(name, ratio=0.25, keep_positions=True)
    )
    assert uncached.record.visual_tokens_after < one.visual_tokens
    assert refreshed.token_ids == uncached.token_ids
    assert refreshed.record.visual_tokens_after == uncached.record.visual_tokens_after


@pytest.mark.parametrize("mode", MODES)
def test_recorded_scores_come_from_the_full_forwards(tiny, prompt, mode):
    """``record_scores`` reads the block starts' forwards only: a dual window lacks the masked rows after its block,
    which RedVTP's scores ask for."""
    pruner = make_pruner("redvtp", ratio=0.25, record_scores=True)
    record = generate(tiny, prompt, replace(SETTINGS, fast_dllm=mode), pruner).record
    assert record.steps == 8 and len(record.scores) == 2  # the first steps of the two blocks
