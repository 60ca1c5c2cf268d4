"""AdaptInfer's offline analysis: the LM layers where the text-guided attention to the visual tokens shifts.

Command (prints the per-layer histogram and the layers to pass to the pruner)::

    python -m redvtp_eval.analysis.adaptinfer_layers --family llada_v --path checkpoints/tiny-llada-v --samples 8
    # then: python -m redvtp_eval pruner=adaptinfer 'pruner.layers=[...]'

The official rule (weiczh02/AdaptInfer-base ``prepocess.py``, commit 91b1784): for each sample, the per-layer
text→visual score of every visual token (here AdaptInfer's own score, :func:`weighted_visual_scores`, from the
prompt text after the image, in step 1's forward, every response row masked); the top 10 % of tokens by the
score summed over layers (official 58 of 576); each one's score cumulated over layers and split at its single
change point of least squared error (ruptures ``Binseg``, L2 cost; here exact, with segments of at least one
layer rather than ruptures' two, so a 4-layer model has more than one candidate). A change point t — the first
segment is layers 1..t — votes for pruning after t layers. The official reads the histogram by hand; here the
``stages`` layers with most votes are taken (ties: the earlier layer).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from torch import Tensor

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.harness.offline_tasks import held_out, task_generation, task_prompt
from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.models.base import DiffusionVLM, Prompt
from redvtp_eval.pruners.adaptinfer import weighted_visual_scores

TASK = "redvtp_toy_docvqa"
TOP_SHARE = 58 / 576
"""Share of the visual tokens whose curves vote (the official 58 of LLaVA-1.5's 576)."""


class EveryLayer:
    """A :class:`~redvtp_eval.models.base.LayerHook` that probes every layer with its own probe and drops nothing."""

    def __init__(self, rows: Tensor, cols: Tensor) -> None:
        self.rows, self.cols = rows, cols
        self.probes: list[AttentionProbe] = []

    def probe(self, layer: int) -> AttentionProbe:
        self.probes.append(AttentionProbe(self.rows, self.cols))
        return self.probes[-1]

    def after_layer(self, layer: int, hidden: Tensor) -> None:
        return None


@torch.no_grad()
def layer_scores(model: DiffusionVLM, prompt: Prompt, gen_length: int) -> Tensor:
    """(layers, V) AdaptInfer's score of each visual token at each layer of step 1's forward (head-averaged)."""
    length = len(prompt.embeds)
    end = prompt.visual_spans[-1][1]
    visual = torch.cat([torch.arange(start, stop) for start, stop in prompt.visual_spans])
    rows = torch.arange(end, length)
    tokens = torch.full((gen_length,), model.mask_token_id, device=model.device)
    embeds = torch.cat([prompt.embeds, model.embed(tokens)])
    hook = EveryLayer(rows.to(model.device), torch.cat([visual, rows]).to(model.device))
    positions = torch.arange(len(embeds), device=model.device)
    model.logits(embeds, positions, positions[length:], hook=hook)
    scores = []
    for probe in hook.probes:
        attention = probe.mean()
        scores.append(weighted_visual_scores(attention[:, len(visual) :], attention[:, : len(visual)]))
    return torch.stack(scores).cpu()


def change_point(curve: Tensor) -> int:
    """The t in 1..len−1 that splits ``curve`` into [:t], [t:] with the least total squared error about the means."""
    errors = [
        ((curve[:t] - curve[:t].mean()) ** 2).sum() + ((curve[t:] - curve[t:].mean()) ** 2).sum()
        for t in range(1, len(curve))
    ]
    return int(torch.stack(errors).argmin()) + 1


def votes(scores: Tensor, top_share: float = TOP_SHARE) -> list[int]:
    """Change points of the cumulated curves of the top tokens of one sample's (layers, V) scores."""
    top = scores.sum(dim=0).topk(max(1, int(scores.shape[1] * top_share))).indices
    cumulated = scores.double().cumsum(dim=0)
    return [change_point(cumulated[:, v]) for v in top.tolist()]


def chosen_layers(histogram: Counter, stages: int) -> list[int]:
    """The ``stages`` layer counts with most votes, ties to the earlier, in order."""
    return sorted(sorted(histogram, key=lambda k: (-histogram[k], k))[:stages])


def analyse(model: DiffusionVLM, family: str, samples: int, stages: int) -> dict:
    settings, think_mode = FAMILIES[family].settings(task_generation(TASK, family))
    histogram: Counter = Counter()
    for index in range(samples):
        sample = held_out(TASK, index)
        prompt = model.prepare(task_prompt(TASK, {"question": sample.question}), [sample.image], think_mode)
        histogram.update(votes(layer_scores(model, prompt, settings.gen_length)))
    return {
        "histogram": {k: histogram[k] for k in range(1, model.num_layers)},
        "layers": chosen_layers(histogram, stages),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llada_v", choices=list(FAMILIES))
    parser.add_argument("--path", required=True, help="checkpoint directory, as the model config's path")
    parser.add_argument("--samples", type=int, default=8, help="held-out toy samples to analyse")
    parser.add_argument("--stages", type=int, default=3, help="pruning layers to choose")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model = FAMILIES[args.family].load(args.path, dtype=args.dtype, device=args.device)
    result = analyse(model, args.family, args.samples, args.stages)
    print(json.dumps(result))
    print(f"pruner=adaptinfer 'pruner.layers=[{','.join(map(str, result['layers']))}]'")
    return result


if __name__ == "__main__":
    main()
