"""AdaptInfer's offline layer analysis: its change point against brute force, its per-layer scores against a naive
eager reference, and the command on the tiny model."""

from __future__ import annotations

import torch
from conftest import DEEP_LAYERS
from helpers import layer_maps, page

from redvtp_eval.analysis.adaptinfer_layers import change_point, layer_scores, main
from redvtp_eval.pruners.adaptinfer import weighted_visual_scores


def test_the_change_point_is_the_split_of_least_squared_error():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        curve = torch.rand(7, generator=generator, dtype=torch.float64).cumsum(0)
        errors = {}
        for t in range(1, 7):
            left, right = curve[:t].tolist(), curve[t:].tolist()
            errors[t] = sum((v - sum(left) / len(left)) ** 2 for v in left) + sum(
                (v - sum(right) / len(right)) ** 2 for v in right
            )
        assert change_point(curve) == min(errors, key=errors.get)
    assert change_point(torch.tensor([0.0, 0.0, 0.0, 5.0, 5.0])) == 3


def test_layer_scores_equal_the_pruners_rule_on_eager_maps(deep, deep_eager):
    prompt = deep.prepare("What is the total?", [page((384, 192))], "no_think")
    ((start, end),) = prompt.visual_spans
    ours = layer_scores(deep, prompt, gen_length=8)
    rows = list(range(end, len(prompt.embeds)))
    for layer, attention in enumerate(layer_maps(deep_eager, prompt)):
        mean = attention.mean(dim=0)
        naive = weighted_visual_scores(mean[rows][:, rows], mean[rows][:, start:end])
        torch.testing.assert_close(ours[layer], naive, atol=1e-5, rtol=0)


def test_the_command_chooses_layers_of_the_tiny_model(deep_dir, capsys):
    result = main(["--path", str(deep_dir), "--samples", "1", "--stages", "2"])
    assert sum(result["histogram"].values()) > 0 and list(result["histogram"]) == list(range(1, DEEP_LAYERS))
    assert len(result["layers"]) == 2 and all(1 <= k < DEEP_LAYERS for k in result["layers"])
    assert "pruner=adaptinfer 'pruner.layers=[" in capsys.readouterr().out
