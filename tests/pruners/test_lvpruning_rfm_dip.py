"""The two trained rivals, LVPruning and RFM+DIP: their trainers on the frozen tiny model, the training forward against
the network's own, scores against naive references, kept counts per stage, tile selection, keep-all equals unpruned,
missing or mismatched module files, the tower-savings command and one job each through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import page
from test_rivals import SETTINGS, Capture

from redvtp_eval.analysis import rfm_dip_tower, train_lvpruning, train_rfm
from redvtp_eval.analysis.train_lvpruning import weighted_layer
from redvtp_eval.engine.sampler import generate
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import kept_count
from redvtp_eval.pruners.lvpruning import DecisionModules
from redvtp_eval.pruners.rfm_dip import RegionFocusModule, rfm_dip_keep, select_tiles, tile_under_base

QUESTION = "What is the total?"


@pytest.fixture(scope="module")
def trained(deep_dir, tmp_path_factory):
    """Module files trained for a few steps on the 4-layer tiny LLaDA-V, through the trainers' command lines."""
    out = tmp_path_factory.mktemp("trained")
    lv = train_lvpruning.main(["--model", str(deep_dir), "--out", str(out / "lv" / "lv.pt"), "--steps", "3"])
    rfm = train_rfm.main(["--model", str(deep_dir), "--out", str(out / "rfm" / "rfm.pt"), "--samples", "2"])
    return {"lvpruning": str(lv), "rfm_dip": str(rfm)}


@pytest.fixture(scope="module")
def square(deep):
    """One AnyRes image of two tiles side by side (base view 27×27, tile map 27×54)."""
    return deep.prepare(QUESTION, [page((768, 384))], "no_think")


@pytest.mark.parametrize("name", ["lvpruning", "rfm_dip"])
def test_keeping_every_token_reproduces_the_unpruned_tokens(deep, square, trained, name):
    unpruned = generate(deep, square, SETTINGS)
    result = generate(deep, square, SETTINGS, make_pruner(name, ratio=1.0, modules=trained[name]))
    assert result.token_ids == unpruned.token_ids
    assert result.record.effective_visual_tokens == square.visual_tokens


def test_the_training_forward_with_unit_weights_is_the_networks_and_zero_weights_drop_keys(deep_eager, square):
    network = deep_eager.network
    embeds = square.embeds[None]
    positions = torch.arange(embeds.shape[1])[None]
    rope = network.model.rotary_emb(embeds, positions)
    hidden = embeds
    for layer in network.model.layers:
        hidden = weighted_layer(layer, hidden, rope, torch.ones(1, embeds.shape[1]))
    expected = network.hidden_states(embeds, positions, None)
    torch.testing.assert_close(network.model.norm(hidden), expected, atol=1e-4, rtol=1e-4)
    # A zero weight removes the key: the other rows equal a forward without those tokens (positions kept).
    start = square.visual_spans[0][0]
    dropped = torch.arange(start, start + 50)
    weights = torch.ones(1, embeds.shape[1])
    weights[0, dropped] = 0
    layer = network.model.layers[0]
    with_weights = weighted_layer(layer, embeds, rope, weights)
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    keep[dropped] = False
    short_rope = tuple(part[:, keep] for part in rope)
    without = weighted_layer(layer, embeds[:, keep], short_rope, torch.ones(1, int(keep.sum())))
    torch.testing.assert_close(with_weights[:, keep], without, atol=1e-5, rtol=1e-5)


def naive_decision_logits(module, visual, text):
    """The decision module's logits by explicit per-head loops."""
    v, t = module.norm_visual(visual), module.norm_text(text)
    q, k, val = module.query(v), module.key(t), module.value(t)
    size = q.shape[1] // module.heads
    heads = []
    for h in range(module.heads):
        part = slice(h * size, (h + 1) * size)
        weights = torch.softmax(q[:, part] @ k[:, part].T / size**0.5, dim=1)
        heads.append(weights @ val[:, part])
    return module.score(torch.cat([v, torch.cat(heads, dim=1)], dim=1)).squeeze(1)


def test_lvpruning_keeps_the_top_logits_at_each_trained_layer(deep, square, trained):
    pruner = make_pruner("lvpruning", ratio=0.25, modules=trained["lvpruning"])
    capture = Capture(pruner)
    generate(deep, square, SETTINGS, pruner)
    n = square.visual_tokens
    assert [call.layer for call, _ in capture.seen] == pruner.modules.layers == [1, 2]
    expected_counts = [kept_count(n, 0.25**0.5), kept_count(n, 0.25)]
    assert [len(kept[0]) for _, kept in capture.seen] == expected_counts
    for stage, (context, kept) in enumerate(capture.seen):
        (visual,) = context.visual_hidden()
        text = context.hidden[context.prompt_text]
        with torch.no_grad():
            logits = naive_decision_logits(pruner.modules.stages[stage], visual, text)
        torch.testing.assert_close(pruner.logits(context)[0], logits, atol=1e-5, rtol=1e-5)
        top = set(torch.topk(logits, expected_counts[stage]).indices.tolist())
        assert set(kept[0].tolist()) == top


def naive_relevance(rfm, features, text):
    v, t = rfm.norm_visual(features), rfm.norm_text(text)
    q, k, bias = rfm.query(t), rfm.key(v), rfm.bias(v).squeeze(1)
    size = q.shape[1] // rfm.heads
    total = torch.zeros(len(features))
    for h in range(rfm.heads):
        part = slice(h * size, (h + 1) * size)
        for u in range(len(text)):
            total += torch.softmax(q[u, part] @ k[:, part].T / size**0.5 + bias, dim=0)
    return total / (rfm.heads * len(text))


def test_tile_crops_follow_the_anyres_layout(square):
    crops, ((_, side, _, _), (first, rows, cols, stride)) = square.token_crops[0], square.visual_grids[0]
    assert (crops[: side * side] == 0).all()
    tile_map = crops[first:].view(rows, stride)
    assert (tile_map[:, -1] == -1).all()  # image_newline
    unit = side
    for r in range(rows):
        for c in range(cols):
            assert tile_map[r, c] == 1 + (r // unit) * (cols // unit) + c // unit


def test_rfm_dip_selects_voted_tiles_and_keeps_the_base_view_then_the_best_tile_tokens(deep, square, trained):
    pruner = make_pruner("rfm_dip", ratio=0.5, modules=trained["rfm_dip"])
    ((start, end),) = square.visual_spans
    features, crops, grids = square.embeds[start:end], square.token_crops[0], square.visual_grids[0]
    text = square.embeds[torch.cat([torch.arange(0, start), torch.arange(end, len(square.embeds))])]
    with torch.no_grad():
        relevance = pruner.rfm(features[crops == 0], text)
        torch.testing.assert_close(
            relevance, naive_relevance(pruner.rfm, features[crops == 0], text), atol=1e-6, rtol=1e-5
        )
        # Votes by hand: the tile under each of the top base tokens' centres.
        side, (first, rows, cols, stride) = grids[0][1], grids[1]
        voters = torch.topk(relevance, kept_count(side * side, 0.5)).indices
        votes = {}
        for token in voters.tolist():
            r, c = divmod(token, side)
            tile = int(crops[first + int((r + 0.5) * rows / side) * stride + int((c + 0.5) * cols / side)])
            votes[tile] = votes.get(tile, 0) + 1
        assert select_tiles(relevance, tile_under_base(crops, grids), 0.5).tolist() == sorted(votes)
        best = max(votes, key=lambda tile: (votes[tile], -tile))
        assert select_tiles(relevance, tile_under_base(crops, grids), 0.5, max_tiles=1).tolist() == [best]
        budget = kept_count(len(features), 0.5)
        kept, chosen = rfm_dip_keep(pruner.rfm, features, text, crops, grids, budget, 0.5)
    assert len(kept) == min(budget, int((crops == 0).sum()) + int(torch.isin(crops, chosen).sum()))
    assert (crops[kept] >= 0).all() and torch.isin(crops[kept][crops[kept] > 0], chosen).all()
    assert set((crops == 0).nonzero().squeeze(1).tolist()) <= set(kept.tolist())
    result = generate(deep, square, SETTINGS, pruner)
    assert result.record.visual_tokens_after == len(kept)
    assert [t.tolist() for t in pruner.selected] == [chosen.tolist()]


def test_rfm_dip_below_the_base_view_keeps_its_best_tokens_only(deep, square, trained):
    pruner = make_pruner("rfm_dip", ratio=0.1, modules=trained["rfm_dip"])
    result = generate(deep, square, SETTINGS, pruner)
    assert result.record.visual_tokens_after == kept_count(square.visual_tokens, 0.1)
    assert [t.tolist() for t in pruner.selected] == [[]]


def test_missing_and_mismatched_module_files_say_how_to_train(deep, square, tmp_path, trained):
    for name, command in (("lvpruning", "train_lvpruning"), ("rfm_dip", "train_rfm")):
        with pytest.raises(FileNotFoundError, match=f"redvtp_eval.analysis.{command}"):
            make_pruner(name, modules=str(tmp_path / "absent.pt"))
    with pytest.raises(ValueError, match="'lvpruning' modules, not rfm_dip's"):
        make_pruner("rfm_dip", modules=trained["lvpruning"])
    DecisionModules([1, 2], hidden=8, inner=8, heads=2, meta={"model": "elsewhere"}).save(tmp_path / "lv8.pt")
    RegionFocusModule(8, inner=8, heads=2, meta={"model": "elsewhere"}).save(tmp_path / "rfm8.pt")
    for name, file in (("lvpruning", "lv8.pt"), ("rfm_dip", "rfm8.pt")):
        with pytest.raises(ValueError, match="trained for hidden size 8 \\(elsewhere\\).*train"):
            generate(deep, square, SETTINGS, make_pruner(name, ratio=0.5, modules=str(tmp_path / file)))
    DecisionModules([2, 4], hidden=8).save(tmp_path / "deep.pt")
    with pytest.raises(ValueError, match="the model has 4 layers"):
        generate(deep, square, SETTINGS, make_pruner("lvpruning", modules=str(tmp_path / "deep.pt")))


def test_the_trainers_write_a_card_and_the_kept_fraction_log(trained):
    lv = trained["lvpruning"]
    log = [json.loads(line) for line in open(lv.replace(".pt", ".log.jsonl"))]
    assert [entry["step"] for entry in log] == [1, 2, 3] and all(len(entry["kept"]) == 2 for entry in log)
    for path in trained.values():
        card = open(path.rsplit("/", 1)[0] + "/CARD.md").read()
        assert "python -m redvtp_eval.analysis.train_" in card and "seed: 0" in card


def test_the_tower_savings_command_writes_crops_flops_and_times(deep_dir, trained, tmp_path):
    out = tmp_path / "tower.json"
    report = rfm_dip_tower.main(
        [
            "--model",
            str(deep_dir),
            "--modules",
            trained["rfm_dip"],
            "--samples",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["summary"] == report["summary"]
    (row,) = report["samples"]
    assert row["crops_selected"] == 1 + len(row["tiles_selected"]) <= row["crops_full"]
    assert row["tower_flops_selected"] * row["crops_full"] == row["tower_flops_full"] * row["crops_selected"]


@pytest.mark.parametrize("name", ["lvpruning", "rfm_dip"])
def test_a_job_through_the_command_line_with_the_committed_toy_modules(tmp_path, name):
    job = tmp_path / "job"
    quick = ["wandb.mode=disabled", "task.generation.llada_v.gen_length=8", "task.generation.llada_v.steps=4"]
    quick += ["task.generation.llada_v.block_length=8", "warmup=0", "paired_baseline=false"]
    command = [sys.executable, "-m", "redvtp_eval", *quick, f"pruner={name}", "ratio=0.25", "limit=1"]
    done = subprocess.run([*command, f"hydra.run.dir={job}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sample,) = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    if name == "lvpruning":
        assert sample["effective_visual_tokens"] < sample["visual_tokens_before"]
    else:
        assert sample["visual_tokens_after"] <= kept_count(sample["visual_tokens_before"], 0.25)
