"""Train a small LLaDA-V on the toy task, so that accuracy means something without the real weights.

    python -m redvtp_eval.toy.train /tmp/toy/stage1 --steps 3000 --lr 1e-3 --ramp 0.6 --eval-every 500   # shipped,
    python -m redvtp_eval.toy.train checkpoints/toy-llada-v --init-from /tmp/toy/stage1 --steps 2000 --lr 1e-3 \
        --ramp 0.01 --free-share 0.8 --seed 1 --eval-every 500                                        # two stages
    python -m redvtp_eval.toy.train /tmp/micro --size micro --steps 20   # a smoke run

Where it sits: it writes a checkpoint that ``load_llada_v`` reads like any other (same classes,
tokenizer construction, chat template and prompts as at evaluation), a ``train_log.jsonl`` loss curve
and a ``CARD.md``.

Objective: LLaDA's masked-diffusion SFT loss. Per sample draw t ~ U(0, 1] (stratified over the batch,
which keeps the marginal uniform and the 1/t-weighted loss less noisy), mask each response token with
probability t, and take the cross-entropy on the masked positions weighted by 1/t,
divided by the response length. The response is the answer followed by ``<|eot_id|>`` up to the task's
``gen_length``, so training sees the generation lengths that evaluation uses. Vision tower, projector
and language model are trained together with AdamW (warm-up, cosine decay). Batches are of one form each,
free answer or multiple choice, interleaved at ``--free-share`` (alternating at 0.5). The shipped model took two
stages: the thinning curriculum with both forms alike, then whole and thinned pages mixed, mostly free answers
(the stripe triple is learnt later than the middle stripe alone). Seeded; the same commands give the same weights
on the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from redvtp_eval.engine.families import llada_v_settings
from redvtp_eval.engine.sampler import generate
from redvtp_eval.harness.environment import environment
from redvtp_eval.harness.offline_tasks import TASKS, held_out, task_generation, task_prompt
from redvtp_eval.harness.toy_task import GENERATOR_VERSION, PAGES, QUESTIONS, ToySample, sample_at
from redvtp_eval.models.llada_v import LladaV, LladaVConfig, LladaVNetwork, load_llada_v
from redvtp_eval.models.make_tiny import TINY_CONFIG, build_tokenizer, save_checkpoint

CROP = 192
SLICE = 16
"""The tests check the shipped model against its recorded scores on the first SLICE held-out samples."""
SIZES = {
    "toy": {
        "hidden_size": 96,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "mm_hidden_size": 96,
        "vision_config": {
            **TINY_CONFIG["vision_config"],
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
        },
    },
    "micro": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "mm_hidden_size": 16,
        "vision_config": {
            **TINY_CONFIG["vision_config"],
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
        },
    },
}
"""Both keep LLaDA-V's layout and AnyRes rule with 192-px crops of 16-px patches (12×12 tokens per crop):
a 384×384 page is a 2×2 grid, 144 + 24·25 = 744 visual tokens. The toy's vision tower keeps one layer (as
held, after the official removal of the last): enough for the pruners that read the tower's attention
(VisionZip, SparseVLM), shallow enough that a tag's colours stay in its own tokens."""


def toy_config(size: str) -> dict:
    dims = SIZES[size]
    vision = {**dims["vision_config"], "image_size": CROP, "patch_size": 16}
    return {
        **TINY_CONFIG,
        **dims,
        "vision_config": vision,
        "image_grid_pinpoints": [[CROP * i, CROP * j] for i in range(1, 7) for j in range(1, 7)],
    }


class Batches:
    """Training batches of one task form at a time, built through the model's own prompt path.

    The samples of a batch share one page size and one wording, so their prompts stack without padding;
    both are drawn per batch, so the response's position varies over training. Most batches keep only a
    fraction of each page's visual tokens — the answer region's and others drawn at random, in their order,
    positions renumbered — as a pruner before the LM would. The fraction follows a curriculum
    (:func:`kept_share`): a handful of tokens at first, so that the one answer token is easy to find and the
    model learns to read it; then ever more, up to whole pages, which are half the batches of the last part
    of training. The response's position varies further, and the model learns to answer from whatever
    survives when the answer does; it never sees a page whose answer was dropped."""

    def __init__(self, runtime: LladaV, seed: int, ramp: float = 0.0) -> None:
        self.runtime = runtime
        self.seed = seed
        self.ramp = ramp
        self.drawn = 0
        self.end_of_turn = runtime.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        self.generation = {name: task_generation(name) for name in TASKS}

    def prompt(self, name: str, sample: ToySample) -> str:
        doc = (
            {"question": sample.question}
            if name == "redvtp_toy_docvqa"
            else {"question": sample.choice_question, "options": sample.options}
        )
        return task_prompt(name, doc)

    def answer(self, name: str, sample: ToySample) -> str:
        return sample.answer if name == "redvtp_toy_docvqa" else chr(ord("A") + sample.correct_option)

    def __call__(self, name: str, size: int, progress: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) prompt embeddings with gradients, and (B, G) response token ids, ``progress`` (0–1) into
        training."""
        runtime, generation = self.runtime, self.generation[name]
        shape = random.Random(f"shape/{self.seed}/{self.drawn}")
        page, wording = shape.choice(PAGES), shape.randrange(len(QUESTIONS))
        keep = kept_share(shape, progress, self.ramp) if self.ramp else None
        thinning = torch.Generator().manual_seed(shape.randrange(2**31))
        samples = [sample_at(self.seed, self.drawn + index, page, wording) for index in range(size)]
        self.drawn += size
        crops = [runtime.image_crops([sample.image]) for sample in samples]
        features = runtime.network.encode_crops(torch.cat([pixels for pixels, _ in crops]))
        embeds, responses = [], []
        for sample, (_, layout), block in zip(samples, crops, features.split([lay.crops for _, lay in crops])):
            ids = runtime.prompt_ids(self.prompt(name, sample), 1, generation["think_mode"])
            (visual,) = runtime.visual_blocks(block, layout)
            if keep is not None:
                region = runtime.answer_region(sample.image, sample.answer_box)
                order = torch.randperm(len(visual), generator=thinning)
                ranked = order[torch.argsort((~region[order]).int(), stable=True)]
                visual = visual[ranked[: max(1, int(len(visual) * keep))].sort().values]
            embeds.append(runtime.splice(ids, [visual])[0])
            answer = runtime.encode_text(self.answer(name, sample))
            responses.append(answer + [self.end_of_turn] * (generation["gen_length"] - len(answer)))
        return torch.stack(embeds), torch.tensor(responses)


FEWEST = 0.003
"""The curriculum's smallest share of a page's visual tokens: one or two tokens, the answer's."""
FIRST_TOP = 0.01
"""The largest share at the start of training: at most four tokens of the smallest page."""
WHOLE = 0.5
"""Once the curriculum reaches whole pages, this share of the batches keeps every visual token."""


def kept_share(shape: random.Random, progress: float, ramp: float) -> float | None:
    """The share of visual tokens a batch keeps (None: all), drawn log-uniformly between :data:`FEWEST` and a
    top that grows geometrically from :data:`FIRST_TOP` to 1 over the first ``ramp`` of training."""
    top = min(1.0, FIRST_TOP ** (1 - progress / ramp))
    if top == 1.0 and shape.random() < WHOLE:
        return None
    return math.exp(shape.uniform(math.log(FEWEST), math.log(top)))


def diffusion_loss(
    runtime: LladaV, prompt: torch.Tensor, response: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """LLaDA's SFT loss: mask with probability t, cross-entropy on masked positions weighted by 1/t."""
    batch, length = response.shape
    strata = (torch.arange(batch) + torch.rand(batch, generator=generator)) / batch
    t = strata[torch.randperm(batch, generator=generator)].clamp_min(1e-3)[:, None]
    masked = torch.rand(batch, length, generator=generator) < t
    noisy = torch.where(masked, runtime.mask_token_id, response)
    sequence = torch.cat([prompt, runtime.embed(noisy)], dim=1)
    positions = torch.arange(sequence.shape[1]).expand(batch, -1)
    hidden = runtime.network.hidden_states(sequence, positions, None)
    logits = runtime.network.lm_head(hidden[:, -length:]).float()
    cross_entropy = F.cross_entropy(logits.transpose(1, 2), response, reduction="none")
    return ((cross_entropy * masked).sum(dim=1, keepdim=True) / t / length).mean()


@torch.no_grad()
def held_out_scores(runtime: LladaV, size: int) -> dict:
    """Mean score on the first ``size`` held-out samples of each offline task (unpruned, greedy)."""
    return {name: sum(values) / len(values) for name, values in held_out_values(runtime, size).items()}


@torch.no_grad()
def held_out_values(runtime: LladaV, size: int) -> dict[str, list[float]]:
    """Per-sample scores on the first ``size`` held-out samples of each offline task, with the evaluation's
    prompts, sampler and metrics (ANLS for the free answer, letter match for the options)."""
    from lmms_eval.api.metrics import anls

    batches = Batches(runtime, seed=0)
    scores = {}
    for name in TASKS:
        settings, think_mode = llada_v_settings(batches.generation[name])
        values = []
        for index in range(size):
            sample = held_out(name, index)
            prompt = runtime.prepare(batches.prompt(name, sample), [sample.image], think_mode)
            text = generate(runtime, prompt, settings).text
            target = batches.answer(name, sample)
            values.append(anls([target], [text])["anls"] if name == "redvtp_toy_docvqa" else float(text == target))
        scores[name] = values
    return scores


def train(
    out_dir: Path,
    size: str,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_size: int,
    ramp: float = 0.0,
    eval_every: int = 0,
    eval_during: int = 8,
    stop_after: int | None = None,
    init_from: Path | None = None,
    free_share: float = 0.5,
) -> dict:
    """Train and save; ``ramp``: the share of the schedule over which the curriculum of :class:`Batches` grows
    to whole pages (0: whole pages throughout). Every ``eval_every`` steps (0: never) score the first
    ``eval_during`` held-out samples of each form into ``eval_log.jsonl`` (monitoring only: nothing is chosen
    by it) and save the checkpoint so far, which the end of training overwrites. ``stop_after``: run only the
    first steps of the ``steps``-step schedule (the learning rate still follows ``steps``). ``init_from``: start
    from that checkpoint's weights (a second stage, with its own schedule) instead of a fresh network.
    ``free_share``: the share of batches in the free-answer form (the rest are multiple choice)."""
    torch.manual_seed(seed)
    raw = toy_config(size)
    if init_from is not None:
        runtime = load_llada_v(init_from, dtype="float32")
        if runtime.network.config.text.hidden_size != raw["hidden_size"]:
            raise ValueError(f"{init_from} is not a {size!r} toy checkpoint")
        raw = {**raw, "vocab_size": runtime.network.lm_head.out_features}  # as loaded: cut to the tokenizer
    else:
        runtime = LladaV(LladaVNetwork(LladaVConfig.from_dict(raw, "sdpa")), build_tokenizer())
    network = runtime.network.train()
    batches = Batches(runtime, seed, ramp)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    log_path.write_text("")
    eval_path = out_dir / "eval_log.jsonl"
    eval_path.write_text("")
    config = {**raw, "redvtp_eval_toy": {"size": size, "seed": seed, "generator_version": GENERATOR_VERSION}}
    started = time.perf_counter()
    for step in range(min(steps, stop_after or steps)):
        free, choice = list(TASKS)
        name = free if math.ceil((step + 1) * free_share) > math.ceil(step * free_share) else choice
        prompt, response = batches(name, batch_size, step / steps)
        loss = diffusion_loss(runtime, prompt, response, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        entry = {
            "step": step + 1,
            "task": name,
            "loss": loss.item(),
            "lr": schedule.get_last_lr()[0],
            "seconds": time.perf_counter() - started,
        }
        with log_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if (step + 1) % 25 == 0 or step == 0:
            print(
                f"step {step + 1:>5}/{steps}  {name:<18} loss {entry['loss']:.4f}  {entry['seconds']:.0f}s", flush=True
            )
        if eval_every and (step + 1) % eval_every == 0:
            network.eval()
            scores = held_out_scores(runtime, eval_during)
            save_checkpoint(network, config, out_dir)
            network.train()
            with eval_path.open("a") as handle:
                handle.write(json.dumps({"step": step + 1, "samples": eval_during, "held_out": scores}) + "\n")
            print(f"step {step + 1:>5}  held-out ({eval_during} each): {json.dumps(scores)}", flush=True)
    training_seconds = time.perf_counter() - started
    network.eval()
    save_checkpoint(network, config, out_dir)
    values = held_out_values(load_llada_v(out_dir, dtype="float32"), eval_size)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "training_seconds": training_seconds,
        "held_out": {name: mean(xs) for name, xs in values.items()},
        "held_out_slice": {"size": SLICE, "scores": {name: mean(xs[:SLICE]) for name, xs in values.items()}},
        "final_loss": entry["loss"],
    }


def write_card(out_dir: Path, command: str, args: argparse.Namespace, report: dict) -> None:
    losses = [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    tail = losses[-50:]
    env = environment("cpu")
    lines = [
        f"# Toy LLaDA-V ({args.size})",
        "",
        "A small LLaDA-V (same classes, loader, tokenizer construction, chat template and prompts as the real",
        "model) trained from scratch on the toy task of `redvtp_eval/harness/toy_task.py` (generator version "
        f"{GENERATOR_VERSION}):",
        "read the three stripe colours of the one coloured tag (one 16-px cell) among three to seven grey ones, on",
        "pages of eight sizes. It exists so that accuracy under pruning means something, and depends on which",
        "visual tokens a pruner keeps, on a machine without the real weights. Its numbers say nothing about",
        "LLaDA-V itself.",
        "",
        f"- command: `{command}`",
        f"- seed: {args.seed}; generator version: {GENERATOR_VERSION}; steps: {args.steps}; "
        f"batch size: {args.batch_size}; lr: {args.lr}; curriculum ramp: {args.ramp}; free-answer share: "
        f"{args.free_share}; threads: {args.threads}"
        + (f"; started from the weights of `{args.init_from}`" if args.init_from else ""),
        f"- training time: {report['training_seconds']:.0f} s on {env['device']} ({env['cpu_threads']} threads), "
        f"torch {env['libraries']['torch']}, Python {platform.python_version()}, commit {env['commit']}"
        + (" plus uncommitted changes" if env["dirty"] else ""),
        f"- loss: first {losses[0]:.3f}, mean of the last {len(tail)} steps {sum(tail) / len(tail):.4f} "
        "(`train_log.jsonl`)",
        f"- held-out scores, first {args.eval_size} samples of each offline task, unpruned, greedy:",
    ]
    lines += [f"  - `{name}`: {score:.4f}" for name, score in report["held_out"].items()]
    (out_dir / "CARD.md").write_text("\n".join(lines) + "\n")
    (out_dir / "card.json").write_text(
        json.dumps({"command": command, **vars(args), **report}, indent=2, default=str) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=list(SIZES), default="toy")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-size", type=int, default=64)
    parser.add_argument("--ramp", type=float, default=0.6, help="share of the schedule the thinning curriculum takes")
    parser.add_argument("--eval-every", type=int, default=0, help="score a few held-out samples every N steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of the schedule")
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    parser.add_argument("--free-share", type=float, default=0.5, help="share of free-answer batches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = train(
        args.out_dir,
        args.size,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.eval_size,
        args.ramp,
        args.eval_every,
        stop_after=args.stop_after,
        init_from=args.init_from,
        free_share=args.free_share,
    )
    write_card(args.out_dir, "python -m redvtp_eval.toy.train " + " ".join(sys.argv[1:]), args, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
