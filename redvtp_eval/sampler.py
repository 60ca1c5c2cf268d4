"""The masked-diffusion sampler of LLaDA(-V), with a pruner hook between denoising steps.

Where it sits: ``model.prepare(question, images)`` → :func:`generate` → text and a record. It never
knows which harness or config system called it.

The schedule is the official ``generate_with_embeds``: the canvas is the prompt embeddings followed by
``gen_length`` masks; the response is filled in ``gen_length / block_length`` blocks, left to right, each
with ``steps / num_blocks`` steps; a block unmasks ``floor(m / s)`` tokens per step plus one more in the
first ``m mod s`` steps (m masks, s steps, counted when the block starts). Each step runs the whole
sequence (no KV cache), suppresses four special tokens at masked positions, takes the argmax x0
(Gumbel-max when temperature > 0), and commits the masked positions of the current block with the
highest confidence (float64 softmax probability of x0, or uniform noise for ``random`` remasking).
After a stop string appears, only positions before it may be committed, and the loop ends once they are.

Two departures, both invisible in greedy outputs: logits are computed for the response positions only
(the official code runs the LM head over the prompt too and ignores it), so random draws for
``temperature > 0`` / ``random`` remasking use a different stream than the official code; and with several
stop strings the earliest occurrence of any of them wins (the official loop can miss a later string's
earlier occurrence once one was found).

Pruning: after step ``pruner.prune_after_step`` (default 1) the pruner gets the still-masked positions
and, if it asks, the step's attention from every non-visual position to the visual tokens; the visual
tokens it does not keep are deleted from the sequence for the rest of the generation. Positions are
renumbered 0..L'−1 (the official behaviour) unless the pruner keeps the original ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.models.base import DiffusionVLM, Prompt
from redvtp_eval.pruners.base import PruneContext, Pruner, VisualAttention
from redvtp_eval.timing import Timer

REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class GenerationSettings:
    gen_length: int = 32
    steps: int = 16
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    stop_strings: tuple[str, ...] = ("<|eot_id|>",)

    def __post_init__(self) -> None:
        if min(self.gen_length, self.steps, self.block_length) < 1:
            raise ValueError("gen_length, steps and block_length must be positive")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length {self.gen_length} is not a multiple of block_length {self.block_length}")
        if self.steps % self.num_blocks:
            raise ValueError(f"steps {self.steps} cannot be split evenly over {self.num_blocks} blocks")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking {self.remasking!r} is not one of {', '.join(REMASKING)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to unmask at each of ``steps`` steps for a block holding ``masked`` masks."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


@dataclass
class GenerationRecord:
    """What happened during one generation; seconds are wall-clock, device-synchronised."""

    prompt_tokens: int
    visual_tokens_before: int
    visual_tokens_after: int
    steps: int = 0
    unmasked_per_step: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    pruned_after_step: int | None = None
    kept_visual: list[list[int]] | None = None
    """Per image, the original indices of the visual tokens kept (None: nothing was pruned)."""
    stop_position: int | None = None
    answer_tokens: int = 0
    """Tokens of the returned answer that are not special tokens (the stop string is not returned)."""
    scores: list[list[Tensor]] = field(default_factory=list)
    """With ``record_scores``: per step, per image, a score per original visual token (NaN once pruned)."""


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    record: GenerationRecord


class _Sequence:
    """The prompt part of the canvas as it shrinks under pruning, plus the positions of the whole sequence."""

    def __init__(self, prompt: Prompt, gen_length: int) -> None:
        self.embeds = prompt.embeds
        self.spans = list(prompt.visual_spans)
        self.original_index = [torch.arange(end - start, device=prompt.embeds.device) for start, end in self.spans]
        self.gen_length = gen_length
        self.positions = torch.arange(len(self.embeds) + gen_length, device=prompt.embeds.device)

    @property
    def prompt_length(self) -> int:
        return len(self.embeds)

    @property
    def response(self) -> Tensor:
        return torch.arange(self.gen_length, device=self.embeds.device) + self.prompt_length

    def visual(self) -> Tensor:
        device = self.embeds.device
        return torch.cat([torch.arange(s, e, device=device) for s, e in self.spans] or [self.response[:0]])

    def prompt_text(self) -> Tensor:
        is_text = torch.ones(self.prompt_length, dtype=torch.bool, device=self.embeds.device)
        is_text[self.visual()] = False
        return is_text.nonzero().squeeze(1)

    def keep(self, kept: list[Tensor], keep_positions: bool) -> None:
        """Delete every visual token not in ``kept`` (per image, indices within its current span)."""
        keep = torch.ones(self.prompt_length, dtype=torch.bool, device=self.embeds.device)
        for (start, end), indices in zip(self.spans, kept):
            keep[start:end] = False
            keep[start + indices] = True
        spans, removed = [], 0
        for (start, end), indices in zip(self.spans, kept):
            removed_before = removed
            removed += (end - start) - len(indices)
            spans.append((start - removed_before, start - removed_before + len(indices)))
        self.original_index = [index[indices] for index, indices in zip(self.original_index, kept)]
        self.spans = spans
        self.embeds = self.embeds[keep]
        if keep_positions:
            response_positions = self.positions[len(keep) :]
            self.positions = torch.cat([self.positions[: len(keep)][keep], response_positions])
        else:
            self.positions = torch.arange(self.prompt_length + self.gen_length, device=self.embeds.device)

    def full_length_scores(self, scores: list[Tensor], sizes: list[int]) -> list[Tensor]:
        """Scores over the current visual tokens, placed at their original indices (NaN where pruned)."""
        out = []
        for values, index, size in zip(scores, self.original_index, sizes):
            full = torch.full((size,), float("nan"), device=values.device)
            full[index] = values.float()
            out.append(full.cpu())
        return out


def _gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """argmax of exp(logits) / (−log u)^T in float64: the official Gumbel-max sampling; plain argmax at T = 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    noise = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


def _first_stop(tokens: Tensor, stop_sequences: list[Tensor]) -> int | None:
    """Index in the response where the earliest complete stop sequence starts."""
    starts = []
    for sequence in stop_sequences:
        if len(sequence) <= len(tokens):
            hits = (tokens.unfold(0, len(sequence), 1) == sequence).all(dim=1).nonzero()
            if len(hits):
                starts.append(int(hits[0]))
    return min(starts, default=None)


@torch.no_grad()
def generate(
    model: DiffusionVLM,
    prompt: Prompt,
    settings: GenerationSettings,
    pruner: Pruner | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Fill ``settings.gen_length`` masked positions after ``prompt``; batch size 1."""
    pruner = pruner or Pruner()
    device = model.device
    timer = Timer(device)
    mask_id = model.mask_token_id
    suppressed = torch.tensor(model.suppressed_token_ids, device=device)
    stop_sequences = [torch.tensor(model.encode_text(s), device=device) for s in settings.stop_strings]
    stop_sequences = [sequence for sequence in stop_sequences if len(sequence)]
    sizes = [end - start for start, end in prompt.visual_spans]
    sequence = _Sequence(prompt, settings.gen_length)
    tokens = torch.full((settings.gen_length,), mask_id, dtype=torch.long, device=device)
    record = GenerationRecord(
        prompt_tokens=sequence.prompt_length,
        visual_tokens_before=prompt.visual_tokens,
        visual_tokens_after=prompt.visual_tokens,
        seconds=dict(prompt.seconds),
    )
    steps_per_block = settings.steps // settings.num_blocks
    stop_at: int | None = None
    pruned = False

    for block in range(settings.num_blocks):
        lo, hi = block * settings.block_length, (block + 1) * settings.block_length
        if stop_at is not None and stop_at <= lo:
            break
        schedule = transfer_schedule(int((tokens[lo:hi] == mask_id).sum()), steps_per_block)
        for block_step in range(steps_per_block):
            masked = tokens == mask_id
            if stop_at is not None and not masked[:stop_at].any():
                break
            if not masked[lo:hi].any():
                break
            record.steps += 1
            prune_now = not pruned and record.steps == pruner.prune_after_step
            probe = None
            if pruner.needs_attention and (prune_now or pruner.record_scores) and sequence.spans:
                rows = torch.cat([sequence.prompt_text(), sequence.response])
                probe = AttentionProbe(rows, sequence.visual())

            with timer("step"):
                embeds = torch.cat([sequence.embeds, model.embed(tokens)])
                logits = model.logits(embeds, sequence.positions, sequence.response, probe)
                logits[:, suppressed] = torch.where(masked[:, None], float("-inf"), logits[:, suppressed])
                x0 = _gumbel_argmax(logits, settings.temperature, generator)
                if settings.remasking == "low_confidence":
                    confidence = torch.softmax(logits.double(), dim=-1).gather(1, x0[:, None]).squeeze(1)
                else:
                    confidence = torch.rand(len(tokens), generator=generator, dtype=torch.float64, device=device)
                confidence[(stop_at if stop_at is not None else hi) :] = float("-inf")
                confidence = torch.where(masked, confidence, float("-inf"))
                count = min(schedule[block_step], int(torch.isfinite(confidence).sum()))
                chosen = torch.topk(confidence, count).indices
                tokens[chosen] = x0[chosen]
                if stop_sequences:
                    found = _first_stop(tokens, stop_sequences)
                    if found is not None and (stop_at is None or found < stop_at):
                        stop_at = found
            record.step_seconds.append(timer.seconds.pop("step"))
            record.unmasked_per_step.append(count)

            if probe is None and not prune_now:
                continue
            with timer("prune"):
                context = PruneContext(
                    step=record.steps,
                    visual_spans=list(sequence.spans),
                    masked=(tokens == mask_id).nonzero().squeeze(1) + sequence.prompt_length,
                    decoded=chosen.sort().values + sequence.prompt_length,
                    response=sequence.response,
                    prompt_text=sequence.prompt_text(),
                    attention=VisualAttention(probe, len(embeds)) if probe is not None else None,
                    generator=generator,
                )
                if pruner.record_scores:
                    scores = pruner.scores(context)
                    record.scores.append(sequence.full_length_scores(scores, sizes) if scores else [])
                if prune_now:
                    pruned = True
                    kept = pruner.select(context)
                    if kept is not None:
                        sequence.keep(kept, pruner.keep_positions)
                        record.pruned_after_step = record.steps
                        record.kept_visual = [index.tolist() for index in sequence.original_index]
                        record.visual_tokens_after = sum(len(index) for index in kept)

    record.stop_position = stop_at
    record.seconds["denoise"] = sum(record.step_seconds)
    record.seconds["first_step"] = record.step_seconds[0] if record.step_seconds else 0.0
    record.seconds["prune"] = timer.seconds.get("prune", 0.0)
    token_ids = tokens[:stop_at].tolist() if stop_at is not None else tokens.tolist()
    record.answer_tokens = sum(token not in model.special_token_ids for token in token_ids)
    return Generation(text=model.decode(token_ids), token_ids=token_ids, record=record)
