"""LaViDa (LLaDA and Dream backbones): checkpoints, visual tokens, prompts, its sampler settings, the prefix cache."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import LAVIDA_FAMILIES
from helpers import page
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from redvtp_eval.engine.families import FAMILIES, lavida_dream_settings, lavida_llada_settings
from redvtp_eval.engine.sampler import generate, transfer_schedule
from redvtp_eval.models.checkpoint import CheckpointError
from redvtp_eval.models.lavida import OLMO_KEY_MAP, load_lavida_dream, load_lavida_llada
from redvtp_eval.models.llada_v import TokenOutsideVocabularyError
from redvtp_eval.models.make_tiny import make_tiny
from redvtp_eval.models.prompt import SYSTEM_PROMPT
from redvtp_eval.pruners import make_pruner

SETTINGS = {
    "lavida_llada": lavida_llada_settings({"max_new_tokens": 16, "block_length": 16, "step_ratio": 0.5})[0],
    "lavida_dream": lavida_dream_settings({"max_new_tokens": 16, "step_ratio": 0.5})[0],
}


def keys_of(directory) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


def test_lavida_llada_checkpoint_uses_the_olmo_names_on_the_llada_v_modules(lavida_dirs, lavida_models):
    keys = keys_of(lavida_dirs["lavida_llada"])
    block = {key.split(".", 4)[-1] for key in keys if key.startswith("model.transformer.blocks.0.")}
    assert block == {
        f"{name}.weight"
        for name in ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out", "attn_norm", "ff_norm")
    }
    assert {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"} <= keys
    assert not any(key.startswith(("model.layers.", "lm_head")) for key in keys)
    model, _ = lavida_models["lavida_llada"]
    weights = load_file(lavida_dirs["lavida_llada"] / "model.safetensors")
    down = weights["model.transformer.blocks.1.ff_out.weight"]
    assert torch.equal(model.network.model.layers[1].mlp.down_proj.weight, down)
    assert OLMO_KEY_MAP.to_checkpoint("model.layers.12.self_attn.o_proj.weight") == (
        "model.transformer.blocks.12.attn_out.weight"
    )


@pytest.mark.parametrize(("family", "head_rows"), [("lavida_llada", 512), ("lavida_dream", None)])
def test_the_loader_cuts_the_vocabulary_as_the_official_resize(lavida_models, family, head_rows):
    """resize_token_embeddings(len(tokenizer)): the input embedding always; the head only for an untied config
    (Dream's class default); LaViDa-LLaDA's OLMo config is tied by default, so its 512-row head stays."""
    model, _ = lavida_models[family]
    words = len(model.tokenizer)
    assert model.network.model.embed_tokens.num_embeddings == words < 512
    assert model.network.lm_head.weight.shape[0] == model.network.lm_head.out_features == (head_rows or words)
    ids = torch.tensor([3, words - 1])
    assert torch.equal(model.embed(ids), model.network.model.embed_tokens.weight[ids])
    if head_rows:
        with pytest.raises(TokenOutsideVocabularyError, match=f"committed id {words}, past its {words}-row"):
            model.embed(torch.tensor([3, words]))


def test_an_untied_lavida_llada_config_cuts_the_head_too(lavida_dirs, tmp_path):
    directory = shutil.copytree(lavida_dirs["lavida_llada"], tmp_path / "untied")
    raw = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**raw, "tie_word_embeddings": False}))
    model = load_lavida_llada(directory, dtype="float32")
    assert model.network.lm_head.weight.shape[0] == model.config.text.vocab_size == len(model.tokenizer)


def test_lavida_dream_is_qwen2_shaped(lavida_dirs, lavida_models):
    keys = keys_of(lavida_dirs["lavida_dream"])
    assert {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"} <= keys
    assert "model.layers.0.self_attn.o_proj.bias" not in keys
    model, _ = lavida_models["lavida_dream"]
    attention = model.network.model.layers[0].self_attn
    assert attention.k_proj.weight.shape[0] * 2 == attention.q_proj.weight.shape[0]
    assert model.mask_token_id == model.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert model.shifted_logits and model.suppressed_token_ids == ()


@pytest.fixture
def edited(lavida_dirs, tmp_path):
    def edit(family, change):
        copy = tmp_path / family
        shutil.copytree(lavida_dirs[family], copy)
        weights = load_file(copy / "model.safetensors")
        change(weights)
        save_file(weights, copy / "model.safetensors")
        return copy

    return edit


def test_strict_key_check_names_keys_as_the_checkpoint_spells_them(edited):
    path = edited("lavida_llada", lambda w: w.pop("model.transformer.blocks.1.attn_out.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 keys: model\.transformer\.blocks\.1\.attn_out\.weight"):
        load_lavida_llada(path, dtype="float32")
    path = edited("lavida_dream", lambda w: w.update(extra=w["model.norm.weight"].clone()))
    with pytest.raises(CheckpointError, match="unexpected 1 keys: extra"):
        load_lavida_dream(path, dtype="float32")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_aspect_ratio", "square", "only LaViDa's plain 'anyres'"),
        ("mm_spatial_pool_mode", "average", "pool bilinearly"),
        ("block_type", "sequential", "needs block_type='llama'"),
    ],
)
def test_configs_it_cannot_run_are_refused(lavida_dirs, tmp_path, field, value, message):
    copy = tmp_path / "ckpt"
    shutil.copytree(lavida_dirs["lavida_llada"], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=message):
        load_lavida_llada(copy, dtype="float32")


@pytest.mark.parametrize(
    ("loader", "hub_id"), [(load_lavida_llada, "lavida-llada"), (load_lavida_dream, "lavida-dream")]
)
def test_missing_checkpoint_says_how_to_fetch_it(tmp_path, monkeypatch, loader, hub_id):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"huggingface-cli download jacklishufan/{hub_id}-v1.0-instruct"):
        loader(dtype="float32")


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
@pytest.mark.parametrize(
    ("size", "tokens"), [((1700, 2200), 840), ((1024, 1024), 1008), ((800, 600), 834), ((384, 384), 406)]
)
def test_visual_token_counts_follow_pooled_plain_anyres(lavida_models, family, size, tokens):
    model, _ = lavida_models[family]
    assert model.prepare("What is the total?", [page(size)]).visual_tokens == tokens


def test_every_crop_is_pooled_to_14x14_and_rows_end_with_the_newline(lavida_models):
    model, _ = lavida_models["lavida_llada"]
    pixels, layout = model.image_crops([page((384, 384))])
    features = model.network.encode_crops(pixels)
    base = torch.nn.functional.interpolate(
        features[0].view(27, 27, -1).permute(2, 0, 1)[None], size=[14, 14], mode="bilinear"
    )[0]
    (block,) = model.visual_blocks(features, layout)
    torch.testing.assert_close(block[:196], base.flatten(1).T)
    rows = block[196:].view(14, 15, -1)
    assert torch.equal(rows[:, -1], model.network.model.image_newline.expand(14, -1))


def test_templates_render_the_official_conversations(lavida_models):
    llada, _ = lavida_models["lavida_llada"]
    dream, _ = lavida_models["lavida_dream"]
    assert llada.render("<image>\nQ?") == (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "<image>\nQ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert dream.render("<image>\nQ?") == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<image>\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="LaViDa-Dream has no think mode"):
        dream.prepare("Q", [], "no_think")


def test_answers_are_decoded_as_the_official_wrappers_do(lavida_models):
    dream, _ = lavida_models["lavida_dream"]
    ids = dream.tokenizer.encode("!!<|im_end|>\n red <|endoftext|>", add_special_tokens=False)
    assert dream.decode(ids) == "red"


def test_lavida_step_counts_and_names():
    settings, think = lavida_llada_settings({"max_new_tokens": 32, "block_length": 32, "step_ratio": 0.5})
    assert (settings.steps, settings.block_length, settings.stop_strings, think) == (16, 32, (), None)
    default = lavida_llada_settings({"max_new_tokens": 256})[0]
    assert (default.block_length, default.steps) == (128, 256)
    assert lavida_llada_settings({"max_new_tokens": 64, "block_length": 32, "step_per_block": 8})[0].steps == 16
    assert lavida_llada_settings({"max_new_tokens": 8, "prefix_lm": "True"})[0].prefix_cache
    dream = lavida_dream_settings({"max_new_tokens": 32, "step_ratio": 0.5, "alg": "topk_margin"})[0]
    assert (dream.steps, dream.block_length, dream.remasking, dream.schedule) == (16, 32, "margin", "dream")
    with pytest.raises(ValueError, match="not both"):
        lavida_llada_settings({"step_ratio": 0.5, "step_per_block": 4})
    with pytest.raises(ValueError, match="alg 'origin'"):
        lavida_dream_settings({"alg": "origin"})


def test_schedules_follow_lavida_and_dream():
    # shift s=0.33, 32 tokens in 16 steps, front-loaded. The official code computes the grid in float32, where
    # σ(1)·32 = 32.000004 floors to 32; in float64 it is 31.99999… and the curve would end 5, 4, 4, 3, 2, 2, 2, 2.
    assert transfer_schedule(32, 16, "shift", 0.33) == [6, 4, 4, 3, 2, 2, 2] + [1] * 9
    for name in ("linear", "shift", "logit_normal", "cosine", "dream"):
        counts = transfer_schedule(31, 8, name)
        assert sum(counts) == 31 and len(counts) == 8, name
    assert transfer_schedule(3, 5, "shift") == [1, 1, 1, 0, 0]
    dream = transfer_schedule(32, 16, "dream")
    assert dream[:-1] == [int(m) for m in _dream_counts(32, 16)] and dream[-1] == 32 - sum(dream[:-1])


def _dream_counts(masked, steps):
    """Dream's ``int(num_mask · (1 − s/t))`` written as its loop does, for all but the last step."""
    times = torch.linspace(1, 1e-3, steps + 1)
    left = masked
    for step in range(steps - 1):
        count = int(left * (1 - times[step + 1] / times[step]))
        left -= count
        yield count


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
@pytest.mark.parametrize("prefix_cache", [False, True])
def test_ratio_one_reproduces_the_unpruned_tokens(lavida_models, family, prefix_cache):
    model, _ = lavida_models[family]
    settings = replace(SETTINGS[family], prefix_cache=prefix_cache)
    prompt = model.prepare("What is the total?", [page((800, 600))])
    unpruned = generate(model, prompt, settings)
    result = generate(model, prompt, settings, make_pruner("redvtp", ratio=1.0))
    assert result.token_ids == unpruned.token_ids
    assert result.record.pruned_after_step == 1 and result.record.visual_tokens_after == 834


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
@pytest.mark.parametrize("prefix_cache", [False, True])
def test_pruning_changes_the_answer_of_the_tiny_model(lavida_models, family, prefix_cache):
    """Guards the test above: the output does depend on which visual tokens are kept."""
    model, _ = lavida_models[family]
    settings = replace(SETTINGS[family], prefix_cache=prefix_cache)
    prompt = model.prepare("What is the total?", [page((800, 600))])
    pruned = generate(model, prompt, settings, make_pruner("redvtp", ratio=0.1))
    assert pruned.token_ids != generate(model, prompt, settings).token_ids


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
def test_cached_pruning_drops_keys_and_keeps_positions(lavida_models, family, monkeypatch):
    model, _ = lavida_models[family]
    settings = replace(SETTINGS[family], prefix_cache=True)
    prompt = model.prepare("Q", [page((800, 600))])
    length, gen = len(prompt.embeds), settings.gen_length
    calls = []
    logits = model.logits

    def spy(embeds, position_ids, at, probe=None, cache=None, **options):
        calls.append((len(embeds), position_ids.clone(), cache.length))
        return logits(embeds, position_ids, at, probe, cache, **options)

    monkeypatch.setattr(model, "logits", spy)
    record = generate(model, prompt, settings, make_pruner("redvtp", ratio=0.25)).record
    removed = 834 - record.visual_tokens_after
    assert removed == 834 - 208
    assert [call[0] for call in calls] == [gen] * record.steps
    assert all(torch.equal(call[1], torch.arange(length, length + gen)) for call in calls)
    assert [call[2] for call in calls] == [length] + [length - removed] * (record.steps - 1)


def test_dream_takes_its_first_answer_token_from_the_prompt_pass(lavida_models):
    model, _ = lavida_models["lavida_dream"]
    prompt = model.prepare("Q", [page()])
    settings = replace(SETTINGS["lavida_dream"], prefix_cache=True)
    result = generate(model, prompt, settings)
    _, last = model.prefill(prompt.embeds, torch.arange(len(prompt.embeds)))
    assert result.token_ids[0] == int(last.argmax())
    assert sum(result.record.unmasked_per_step) == settings.gen_length - 1


def test_with_one_layer_the_cache_changes_nothing(tmp_path):
    """With one layer the prompt's keys and values are functions of the prompt embeddings alone, so whether the
    prompt could attend to the response does not matter: cached and uncached generation must agree."""
    model = FAMILIES["lavida_llada"].load(make_tiny(tmp_path, family="lavida_llada", layers=1), dtype="float32")
    prompt = model.prepare("What is the total?", [page((800, 600))])
    settings = SETTINGS["lavida_llada"]
    for pruner in (None, make_pruner("redvtp", ratio=0.5, keep_positions=True)):
        uncached = generate(model, prompt, settings, pruner)
        cached = generate(model, prompt, replace(settings, prefix_cache=True), pruner)
        assert cached.token_ids == uncached.token_ids
        assert cached.record.kept_visual == uncached.record.kept_visual


@pytest.mark.parametrize("family", LAVIDA_FAMILIES)
def test_a_cached_forward_is_the_full_forward_with_the_prompt_blind_to_the_response(lavida_models, family):
    """The decoder layers must really take the cache: over the response, a forward against the prefilled prompt
    equals a forward over prompt + response in which prompt rows cannot see response columns (LaViDa's
    Prefix-DLM mask), and differs from a forward over the response alone (what an ignored cache gives)."""
    model, _ = lavida_models[family]
    network = model.network
    prompt = model.prepare("What is the total?", [page((800, 600))])
    response = model.embed(torch.full((8,), model.mask_token_id))
    full = torch.cat([prompt.embeds, response])[None]
    P, L = len(prompt.embeds), full.shape[1]
    positions = torch.arange(L)[None]

    cache, _ = model.prefill(prompt.embeds, positions[0, :P])
    cached = network.hidden_states(response[None], positions[:, P:], None, cache)

    blocked = torch.zeros(L, L, dtype=torch.bool)
    blocked[:P, P:] = True
    mask = torch.zeros(1, 1, L, L).masked_fill(blocked, torch.finfo(torch.float32).min)
    hidden, rope = full, network.model.rotary_emb(full, positions)
    for layer in network.model.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    reference = network.model.norm(hidden)[:, P:]

    alone = network.hidden_states(response[None], positions[:, P:], None, None)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)
    assert (cached - alone).abs().max() > 1e-2


def test_the_cache_serves_every_step_from_one_buffer_without_copying_the_prompt():
    from redvtp_eval.models.prefix_cache import PrefixCache

    cache = PrefixCache()
    prompt_keys, prompt_values = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    cache.update(prompt_keys, prompt_values, 0)
    cache.close()
    first = cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), 0)
    new_keys = torch.randn(1, 2, 3, 4)
    second = cache.update(new_keys, torch.randn(1, 2, 3, 4), 0)
    assert second[0].data_ptr() == first[0].data_ptr()  # the same room, written in place
    assert torch.equal(second[0][:, :, :5], prompt_keys) and torch.equal(second[0][:, :, 5:], new_keys)
    cache.keep(torch.tensor([True, False, True, True, False]))
    third = cache.update(new_keys, torch.randn(1, 2, 3, 4), 0)
    assert torch.equal(third[0], torch.cat([prompt_keys[:, :, [0, 2, 3]], new_keys], dim=2))
