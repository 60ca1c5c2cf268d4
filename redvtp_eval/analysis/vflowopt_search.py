"""VFlowOpt's hyperparameter search: the settings whose pruned forward keeps the output closest to the unpruned one.

    python -m redvtp_eval.analysis.vflowopt_search --model checkpoints/toy-llada-v --ratio 0.25 --trials 16

Where it sits: outside the pruners (it runs the model); it loads any model family the harness loads
(``engine.families``), asks the offline toy task's held-out questions and prints the best settings as the
``pruner.*`` overrides of a job (``pruner=vflowopt``), with every trial written to ``--out`` as JSON.

The official search (sihany077/VFlowOpt at 129eeef, ``lmms_eval/models/llava_ov_opt_all.py``) maximises, over 30
training questions, the summed cosine similarity between the last layer's hidden state of the last prompt token
with and without pruning, by Bayesian optimisation (scikit-optimize, 300 calls) over the encoder ratio, the LM
stage ratios, t, m and α_v under a budget of tokens averaged over layers. Adaptation:

* Objective: the mean over questions and response rows of the cosine similarity of step 1's logits (the LM head
  on the last layer's output; the tokens the model suppresses, −inf, left out) with and without pruning, at every
  response row — in a bidirectional masked-diffusion
  forward every masked row predicts an answer token, as the last prompt token does in an AR model.
* Budget: the harness's matched cost fixes the fraction kept at the end (``ratio``), so the search is over how the
  drops are spread (``stage_ratios``, each drawn in [r^(1/S), 1] so that the encoder stage keeps at most every
  token) and the recycling cell m in [3, 24] (the official bounds); t and α_v do not exist here (see
  :mod:`redvtp_eval.pruners.vflowopt`).
* Search: seeded random search, the published setting first (no Bayesian optimiser in the locked environment).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.harness.offline_tasks import TASKS, held_out, task_generation, task_prompt
from redvtp_eval.models.base import Prompt
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.vflowopt import OFFICIAL_CELL, OFFICIAL_STAGE_RATIOS

CELL_RANGE = (3.0, 24.0)


class FirstLogits:
    """The model, with the logits of its first forward kept (what the search compares)."""

    def __init__(self, model) -> None:
        self.model, self.first = model, None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logits(self, *args, **kwargs) -> Tensor:
        out = self.model.logits(*args, **kwargs)
        if self.first is None:
            self.first = out
        return out


def step_one_logits(model, prompt: Prompt, settings: GenerationSettings, options: dict | None) -> Tensor:
    """(response rows, vocab): step 1's logits, unpruned (``options`` None) or with VFlowOpt's ``options``."""
    pruner = make_pruner("vflowopt", **options) if options is not None else None
    recording = FirstLogits(model)
    generate(recording, prompt, settings, pruner)
    return recording.first


def flow_similarity(model, prompts: list[Prompt], settings: GenerationSettings, options: dict) -> float:
    """Mean cosine similarity of step 1's logits with and without pruning, over prompts and response rows."""
    total = 0.0
    for prompt in prompts:
        unpruned = step_one_logits(model, prompt, settings, None)
        pruned = step_one_logits(model, prompt, settings, options)
        finite = unpruned.isfinite().all(dim=0) & pruned.isfinite().all(dim=0)  # suppressed tokens are −inf
        total += float(F.cosine_similarity(pruned[:, finite], unpruned[:, finite], dim=-1).mean())
    return total / len(prompts)


def candidates(ratio: float, trials: int, seed: int) -> list[dict]:
    """The published setting, then ``trials`` − 1 random ones (``stage_ratios`` in [r^(1/S), 1], cell in range)."""
    generator = torch.Generator().manual_seed(seed)
    stages = len(OFFICIAL_STAGE_RATIOS)
    low = ratio ** (1 / stages)
    drawn = [{"ratio": ratio, "stage_ratios": list(OFFICIAL_STAGE_RATIOS), "cell": OFFICIAL_CELL}]
    for _ in range(trials - 1):
        u = torch.rand(stages + 1, generator=generator, dtype=torch.float64).tolist()
        drawn.append(
            {
                "ratio": ratio,
                "stage_ratios": [round(low + (1 - low) * value, 4) for value in u[:stages]],
                "cell": round(CELL_RANGE[0] + (CELL_RANGE[1] - CELL_RANGE[0]) * u[stages], 3),
            }
        )
    return drawn


def search(model, prompts: list[Prompt], settings: GenerationSettings, ratio: float, trials: int, seed: int = 0):
    """Every candidate with its similarity, best first."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    scored = [
        {**c, "similarity": flow_similarity(model, prompts, settings, c)} for c in candidates(ratio, trials, seed)
    ]
    return sorted(scored, key=lambda trial: -trial["similarity"])


def task_prompts(model, family: str, task: str, samples: int) -> tuple[list[Prompt], GenerationSettings]:
    """The first ``samples`` held-out questions of an offline toy task, prepared for VFlowOpt (tower attention),
    and the task's settings cut to one step per block (the search reads step 1 only), uncached."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of the offline tasks {', '.join(TASKS)}")
    settings, think_mode = FAMILIES[family].settings(task_generation(task, family))
    settings = replace(settings, steps=settings.num_blocks, prefix_cache=False, fast_dllm="none", threshold=None)
    layer = make_pruner("vflowopt").tower_attention_layer()
    prompts = []
    for index in range(samples):
        sample = held_out(task, index)
        doc = TASKS[task](sample, index)
        prompts.append(model.prepare(task_prompt(task, doc), [sample.image], think_mode, tower_layer=layer))
    return prompts, settings


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or cached hub id")
    parser.add_argument("--family", default="llada_v", choices=list(FAMILIES))
    parser.add_argument("--task", default="redvtp_toy_docvqa", choices=list(TASKS))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of visual tokens kept at the end")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write every trial here as JSON")
    args = parser.parse_args(argv)
    model = FAMILIES[args.family].load(args.model, dtype=args.dtype, device=args.device)
    prompts, settings = task_prompts(model, args.family, args.task, args.samples)
    trials = search(model, prompts, settings, args.ratio, args.trials, args.seed)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(trials, indent=2) + "\n")
    best = trials[0]
    print(f"best similarity {best['similarity']:.6f} of {len(trials)} trials")
    print(
        f"pruner=vflowopt ratio={best['ratio']} 'pruner.stage_ratios={best['stage_ratios']}' pruner.cell={best['cell']}"
    )
    return trials


if __name__ == "__main__":
    main()
