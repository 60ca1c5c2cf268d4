from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from redvtp_eval.models.checkpoint import CheckpointError, weight_files
from redvtp_eval.models.lavida import load_lavida_llada
from redvtp_eval.models.llada_v import SIGLIP_SO400M_26_LAYERS, load_llada_v, tower_config


@pytest.fixture
def broken_copy(tiny_dir, tmp_path):
    """A copy of the tiny checkpoint whose weights a test can edit."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, copy)

    def edit(change):
        weights = load_file(copy / "model.safetensors")
        change(weights)
        save_file(weights, copy / "model.safetensors")
        return copy

    return edit


def test_missing_key_is_named(broken_copy):
    path = broken_copy(lambda w: w.pop("model.mm_projector.2.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1 keys: model\.mm_projector\.2\.bias"):
        load_llada_v(path, dtype="float32")


def test_unexpected_key_is_named(broken_copy):
    def add_head(weights):
        weights["model.vision_tower.vision_tower.vision_model.head.probe"] = weights["model.image_newline"].clone()

    with pytest.raises(CheckpointError, match=r"unexpected 1 keys: .*vision_model\.head\.probe"):
        load_llada_v(broken_copy(add_head), dtype="float32")


def test_shape_mismatch_is_named(broken_copy):
    def shrink(weights):
        weights["model.image_newline"] = weights["model.image_newline"][:10]

    with pytest.raises(CheckpointError, match=r"model\.image_newline .* shape \(10,\)"):
        load_llada_v(broken_copy(shrink), dtype="float32")


def test_missing_directory_says_how_to_fetch(tmp_path):
    with pytest.raises(CheckpointError, match="huggingface-cli download GSAI-ML/LLaDA-V"):
        load_llada_v(tmp_path / "nowhere", dtype="float32")


def test_hub_id_not_in_cache_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="huggingface-cli download GSAI-ML/LLaDA-V"):
        load_llada_v("GSAI-ML/LLaDA-V", dtype="float32")


def test_weights_are_the_checkpoint_s_and_vocab_is_cut_to_the_tokenizer(tiny, tiny_dir):
    weights = load_file(tiny_dir / "model.safetensors")
    assert weights["lm_head.weight"].shape[0] == 512
    assert tiny.network.lm_head.weight.shape[0] == len(tiny.tokenizer) == 424
    assert (tiny.network.lm_head.weight == weights["lm_head.weight"][:424]).all()
    layer = "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"
    assert (dict(tiny.network.named_parameters())[layer] == weights[layer]).all()


def test_bad_dtype_and_attention_are_refused(tiny_dir):
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_llada_v(tiny_dir, dtype="float8")
    with pytest.raises(ValueError, match="attn_implementation"):
        load_llada_v(tiny_dir, attn_implementation="flash")


def test_an_unrelated_safetensors_file_is_not_read(tiny, tiny_dir, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, copy)
    save_file({"adapter.weight": torch.zeros(3)}, copy / "adapter.safetensors")
    loaded = load_llada_v(copy, dtype="float32")
    assert all((a == b).all() for a, b in zip(loaded.network.state_dict().values(), tiny.network.state_dict().values()))


def test_shards_are_the_files_the_index_names(tiny_dir, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, copy)
    weights = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: weights[key] for key in keys}, copy / shard)
    index = {"weight_map": {key: shard for shard, keys in shards.items() for key in keys}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"stale.weight": torch.zeros(3)}, copy / "model-00003-of-00003.safetensors")
    assert weight_files(copy) == [copy / shard for shard in sorted(shards)]
    load_llada_v(copy, dtype="float32")
    (copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names model-00002-of-00002.safetensors"):
        load_llada_v(copy, dtype="float32")


def tower_layers(model) -> int:
    """How many encoder layers the loaded vision tower holds."""
    found = (re.search(r"vision_tower\..*encoder\.layers\.(\d+)\.", key) for key in model.network.state_dict())
    return len({match.group(1) for match in found if match})


@pytest.mark.parametrize(
    "family, where, form",
    [("llada_v", "checkpoint", "siglip"), ("llada_v", "absolute", "vision"), ("lavida_llada", "checkpoint", "vision")],
)
def test_a_local_mm_vision_tower_gives_the_tower_config_minus_its_last_layer(
    family, where, form, tiny_dir, lavida_dirs, tmp_path
):
    """As the official builder: the tower's own config.json, then its last layer deleted. The checkpoint holds
    the truncated tower's weights, so the strict key check passes only with one layer fewer than the config."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_dir if family == "llada_v" else lavida_dirs[family], copy)
    config = json.loads((copy / "config.json").read_text())
    stored = config.pop("vision_config")
    tower = {**stored, "num_hidden_layers": stored["num_hidden_layers"] + 1, "model_type": "siglip_vision_model"}
    folder = copy / "siglip-tiny" if where == "checkpoint" else tmp_path / "towers" / "siglip-tiny"
    folder.mkdir(parents=True)
    on_disk = {"model_type": "siglip", "vision_config": tower, "text_config": {}} if form == "siglip" else tower
    (folder / "config.json").write_text(json.dumps(on_disk))
    config["mm_vision_tower"] = "siglip-tiny" if where == "checkpoint" else str(folder)
    (copy / "config.json").write_text(json.dumps(config))
    model = {"llada_v": load_llada_v, "lavida_llada": load_lavida_llada}[family](copy, dtype="float32")
    assert tower_layers(model) == tower["num_hidden_layers"] - 1 == stored["num_hidden_layers"]


def test_a_hub_id_tower_is_siglip_so400m_without_its_last_layer(tmp_path):
    raw = {"mm_vision_tower": "google/siglip-so400m-patch14-384"}
    assert tower_config(raw, tmp_path) == SIGLIP_SO400M_26_LAYERS
    assert tower_config({}, tmp_path)["num_hidden_layers"] == 26


def test_vision_tower_attention_is_eager_whatever_the_language_model_uses(tiny, tiny_eager):
    """The official SigLIP attention is a hand-written matmul + softmax; the LM's SDPA must not reach the tower."""
    for model in (tiny, tiny_eager):
        siglip = model.network.model.vision_tower.vision_tower["vision_model"]
        assert siglip.config._attn_implementation == "eager"


def test_official_precision_is_each_familys_default():
    from hydra import compose, initialize_config_dir

    from redvtp_eval.engine.families import FAMILIES
    from redvtp_eval.report.reproduce import CONFIG_DIR

    assert {name: family.dtype for name, family in FAMILIES.items()} == {
        "llada_v": "float16",
        "lavida_llada": "bfloat16",
        "lavida_dream": "bfloat16",
    }
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        assert compose("config", overrides=["model=llada_v"]).model.dtype == "float16"
        assert compose("config", overrides=["model=llada_v", "model.dtype=bfloat16"]).model.dtype == "bfloat16"
        assert compose("config", overrides=["model=lavida_llada"]).model.dtype == "bfloat16"
