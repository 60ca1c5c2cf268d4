"""The masked-diffusion sampler of LLaDA-V and LaViDa, with a pruner hook between denoising steps.

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

Two departures, both invisible in greedy outputs: logits are computed only for the positions the step may
commit — masked, in the current block, before a stop string (the official code runs the LM head and its
float64 softmax over the whole sequence and ignores all but these) — so random draws for
``temperature > 0`` / ``random`` remasking use a different stream than the official code; and with several
stop strings the earliest occurrence of any of them wins (the official loop can miss a later string's
earlier occurrence once one was found).

Fast-dLLM's caches (beyond the paper; ``fast_dllm``, NVlabs/Fast-dLLM ``llada/generate.py``
``generate_with_prefix_cache`` / ``generate_with_dual_cache``): a block's first step (and every
``refresh_every``-th) is the full forward, which also keeps every layer's keys/values; ``prefix`` keeps those
of the positions before the block, and the block's other steps run the block and everything after it
against them; ``dual`` also keeps those after the block, and the other steps run the block alone. The
cached entries are approximations (computed when the block still held masks), exact with one layer. A
between-steps pruner's attention is recorded on the step's forward, full or window (a window's rows only, against
the cache); its deletions leave the cache at once and positions stay the original ones, as with LaViDa's cache.
A pruner inside the LM acts in step 1's forward, a full one: the cache it fills holds, per layer, the rows that
layer ran (all tokens up to layer K, the kept ones after it, an AR KV cache's shape after a FastV prefill);
``in_lm_persist="sequence"`` then drops the tokens from the first K layers' entries and the sequence too,
``"layers"`` replays the drop in every later full forward. An in-LM stage in a cached step and shifted-logits
models are refused.

Parallel decoding (beyond the paper): with ``threshold`` the per-step counts give way to Fast-dLLM's rule
(NVlabs/Fast-dLLM ``llada/generate.py`` ``get_transfer_index``): commit the most confident masked position of
the block and every other one whose confidence is at least the threshold, step after step until the block is
full. LLaDA-V's own Fast-dLLM hook (``train/llava/hooks/fast_dllm_hook.py``) names a different rule
``threshold`` (the n-th most confident is committed while its confidence is ≥ 1 − threshold/(n + 1)); it is
not this one.

LaViDa's settings are the same loop with other choices (one loop, settings decide): no suppressed tokens
(the model reports none), no stop string, the per-block ``schedule`` (``uniform`` above, or LaViDa's
``linear``/``shift``/``logit_normal``/``cosine`` curves, or Dream's ``dream`` timestep rule), the
``remasking`` confidence (``low_confidence``, ``random``, ``margin`` = Dream's ``topk_margin``, ``entropy``),
and the **prefix-KV cache** (``prefix_cache``): the prompt is run once (:meth:`prefill`), and every step
runs only the response positions, which attend to the cached prompt keys/values; the prompt never
attends to the response. A model with ``shifted_logits`` (Dream) takes its first answer token from the
prompt pass when the cache is on, as the official code does.

Waiting for the device: a step waits once. After its commit a five-integer vector (tokens committed, where the
answer stops, masks left before the stop, in the block, among the next step's candidates) is copied to the host
(:func:`_read`). That is needed per step, not per block: the next step computes logits only at the block's masked
positions, whose count is a shape, and the loop ends when the block or the answer (up to a stop string) is
complete; both depend on the tokens just committed (a committed token can be the mask token itself), which only
the device holds. Nothing else in a step waits: the candidates are found by ``nonzero_static`` with the count the
host holds, the threshold rule commits by a mask, the stop search returns a tensor, step times are CUDA events
read once after the generation (:class:`~redvtp_eval.models.timing.Timer`), the RoPE tables are computed once
per position layout, Fast-dLLM's block cache is cut by an index. Other waits: once per generation, where a
pruner's stage acts (building its context and deleting the tokens it drops: a few), reading the events, and
Dream's first token with the prefix cache; one more per step that records attention (the prompt's text rows);
and on LaViDa-LLaDA, whose LM head keeps the padded vocabulary, ``embed`` checks every step's ids (one per step).
Tested by counting (``tests/engine/test_host_syncs.py``).

Pruning: after step ``pruner.prune_after_step`` (default 1) the pruner gets the still-masked positions
and, if it asks, the step's attention from every non-visual position to the visual tokens; the visual
tokens it does not keep are deleted from the sequence for the rest of the generation. Positions are
renumbered 0..L'−1 (the official behaviour) unless the pruner keeps the original ones.

Pruning with the prefix cache (beyond the paper): the step's forward has response queries only, so the
attention recorded is the response rows' (over the full row: cached prompt keys and response keys);
prompt-row query sets are not available. The pruned tokens' keys and values are dropped from the cache
of every layer. Positions are then always the original ones: the cached keys carry the rotation of the
positions they were computed at, and the cached prompt states were computed with every visual token
present, so the cache minus some entries is exactly "the same prompt, attended to on a subset of its
keys"; renumbering would re-rotate keys whose values stay those of the original positions, and
recomputing the prompt would cost the prefill the cache exists to avoid. A merge between steps (D³ToM) merges
each group's cached entries into their plain mean as well (``PrefixCache.merge``, groups from
``Reduction.sources``): an approximation, as the merged token's own keys would come from its merged embedding.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from redvtp_eval.models.attention import AttentionProbe
from redvtp_eval.models.base import DiffusionVLM, Prompt
from redvtp_eval.models.prefix_cache import PrefixCache
from redvtp_eval.models.timing import Timer
from redvtp_eval.pruners.base import (
    LayerContext,
    PruneContext,
    Pruner,
    Reduction,
    VisualAttention,
    VisualInput,
    as_reduction,
)

REMASKING = ("low_confidence", "random", "margin", "entropy")
FAST_DLLM = ("none", "prefix", "dual")
SCHEDULES = ("uniform", "linear", "shift", "logit_normal", "cosine", "dream")
DREAM_EPS = 1e-3
"""The last time of Dream's timestep grid ``linspace(1, eps, steps + 1)`` (its generation config's ``eps``)."""


@dataclass(frozen=True)
class GenerationSettings:
    gen_length: int = 32
    steps: int = 16
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    stop_strings: tuple[str, ...] = ("<|eot_id|>",)
    schedule: str = "uniform"
    shift: float = 3.0
    """The ``shift`` schedule's s (LaViDa's ``schedule__shift``)."""
    prefix_cache: bool = False
    """LaViDa's ``prefix_lm``: compute the prompt's keys/values once; response positions attend to them."""
    fast_dllm: str = "none"
    """Fast-dLLM's approximate KV cache (LLaDA's backbone): ``prefix`` — a full forward at each block's start
    (and every ``refresh_every`` steps) caches every position before the block, and the block's other steps run
    the block and the positions after it against that cache; ``dual`` — the full forward caches the positions
    after the block too, and the other steps run the block alone."""
    refresh_every: int | None = None
    """With ``fast_dllm``: a full forward every this many steps of a block (None: at its first step only; 1: every
    step, which is the uncached loop)."""
    threshold: float | None = None
    """Fast-dLLM's confidence-threshold parallel decoding: each step commits every masked position of the block
    whose confidence is at least this (and the most confident one in any case), until the block is full; the
    fixed per-step counts and ``steps`` are then not used (a block takes at most ``block_length`` steps)."""

    step_limit: int | None = None
    """End after this many denoising steps in all, as if the answer had stopped there: the speed benchmark replays
    the step counts of a finished job's samples with it (``workload``). None: no limit."""

    def __post_init__(self) -> None:
        if self.step_limit is not None and self.step_limit < 1:
            raise ValueError(f"step_limit counts denoising steps and must be >= 1, got {self.step_limit}")
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
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.fast_dllm not in FAST_DLLM:
            raise ValueError(f"fast_dllm {self.fast_dllm!r} is not one of {', '.join(FAST_DLLM)}")
        if self.fast_dllm != "none" and self.prefix_cache:
            raise ValueError("fast_dllm and prefix_cache (LaViDa's prefix_lm) are two caches: choose one")
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"refresh_every counts steps and must be >= 1, got {self.refresh_every}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold is a confidence in [0, 1], got {self.threshold}")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length


def transfer_schedule(masked: int, steps: int, schedule: str = "uniform", shift: float = 3.0) -> list[int]:
    """Tokens to unmask at each of ``steps`` steps for a block holding ``masked`` masks (0 after the last)."""
    if schedule == "uniform":
        base, remainder = divmod(masked, steps)
        return [base + (1 if step < remainder else 0) for step in range(steps)]
    if schedule == "dream":
        return _dream_schedule(masked, steps)
    return _curve_schedule(masked, steps, schedule, shift)


def _dream_schedule(masked: int, steps: int) -> list[int]:
    """Dream's default: at step i of the grid t = linspace(1, eps, steps + 1), ``int(m·(1 − t[i+1]/t[i]))`` of
    the m masks left, and all that remain at the last step (float32, as the official code)."""
    times = torch.linspace(1, DREAM_EPS, steps + 1)
    counts, left = [], masked
    for step in range(steps):
        count = left if step == steps - 1 else int(left * (1 - times[step + 1] / times[step]))
        counts.append(count)
        left -= count
    return counts


def _curve_schedule(masked: int, steps: int, schedule: str, shift: float) -> list[int]:
    """LaViDa's ``get_num_transfer_tokens_sch``: floor(σ(t)·m) on t = linspace(0, 1, s + 1) with s = min(steps, m),
    differences raised to at least 1, the excess taken back one token at a time from the front, then reversed."""
    active = min(steps, masked)
    if active == 0:
        return [0] * steps
    t = torch.linspace(0, 1, active + 1)
    if schedule == "shift":
        sigma = shift * t / (1 + (shift - 1) * t)
    elif schedule == "logit_normal":
        sigma = 0.5 * (1 + torch.erf(torch.log(t / (1 - t)) / math.sqrt(2.0)))
    elif schedule == "cosine":
        sigma = 1 - 0.5 * (1 + torch.cos(math.pi * t))
    else:
        sigma = t
    counts = (sigma * masked).to(torch.int64).diff().clamp(min=1).tolist()
    excess, index = sum(counts) - masked, 0
    while excess > 0:
        index %= len(counts)
        if counts[index] > 1:
            counts[index] -= 1
            excess -= 1
        index += 1
    return counts[::-1] + [0] * (steps - active)


@dataclass(frozen=True)
class ForwardShape:
    """One forward of the language model as the FLOP model counts it: per layer, (query rows, keys, visual keys)."""

    kind: str
    """``prefill`` (the prefix cache's pass over the prompt) or ``step``."""
    layers: list[tuple[int, int, int]]
    logits: int
    """Positions the LM head ran on."""
    probed: list[int]
    """Per layer, the query rows whose attention was probed (0: none)."""


@dataclass
class GenerationRecord:
    """What happened during one generation; seconds are device time (CUDA events) or wall-clock on the CPU."""

    prompt_tokens: int
    visual_tokens_before: int
    visual_tokens_after: int
    steps: int = 0
    unmasked_per_step: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_forward: list[tuple[int, int]] = field(default_factory=list)
    """Per step, (query rows, key positions) of its forward at its first layer: the whole sequence, or with the
    prefix cache the response rows against the cached prompt and the response."""
    forwards: list[ForwardShape] = field(default_factory=list)
    """Every forward of the language model, layer by layer (what :func:`effective_visual_tokens` and the FLOP
    model of :mod:`redvtp_eval.engine.flops` read)."""
    crops: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    pruned_after_step: int | None = None
    """The first step after which the between-steps stage pruned."""
    pruned_at: list[str] = field(default_factory=list)
    """Where the pruner removed or merged tokens, in order: ``before_lm``, ``step1/layer2``, ``after_step1``…"""
    kept_visual: list[list[int]] | None = None
    """Per image, the original indices of the visual tokens kept (None: nothing was pruned)."""
    stop_position: int | None = None
    answer_tokens: int = 0
    """Tokens of the returned answer that are not special tokens (the stop string is not returned)."""
    scores: list[list[Tensor]] = field(default_factory=list)
    """With ``record_scores``: per step, per image, a score per original visual token (NaN once pruned)."""

    @property
    def effective_visual_tokens(self) -> float:
        """Visual tokens averaged over every layer of every forward (prefill included), as keys: the number an
        unpruned model would need to run every layer at the same visual cost."""
        layers = [visual for forward in self.forwards for _, _, visual in forward.layers]
        return sum(layers) / len(layers) if layers else 0.0


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
        self._rope: tuple[Tensor, Tensor] | None = None

    def rope(self, model: DiffusionVLM) -> tuple[Tensor, Tensor]:
        """The RoPE tables (cos, sin) of :attr:`positions`: computed once per layout (again after :meth:`keep`),
        not in every forward; a window's are a slice, as RoPE is per position."""
        if self._rope is None:
            self._rope = model.rotary(self.positions)
        return self._rope

    @property
    def prompt_length(self) -> int:
        return len(self.embeds)

    @property
    def response(self) -> Tensor:
        return torch.arange(self.gen_length, device=self.embeds.device) + self.prompt_length

    def visual(self) -> Tensor:
        return _visual_positions(self.spans, self.embeds.device)

    def prompt_text(self) -> Tensor:
        return _text_positions(self.spans, self.prompt_length, self.embeds.device)

    def current(self, original: list[Tensor]) -> list[Tensor]:
        """Per image, the current indices of the tokens whose original indices are ``original``."""
        return [torch.isin(now, kept).nonzero().squeeze(1) for now, kept in zip(self.original_index, original)]

    def keep(self, reduction: Reduction, keep_positions: bool) -> Tensor:
        """Delete every visual token not in ``reduction.kept`` (per image, indices within its current span) and
        write its ``values`` into the kept ones; returns the boolean mask of the prompt positions kept."""
        keep = _keep_mask(self.spans, reduction.kept, self.prompt_length, self.embeds.device)
        if reduction.values is not None:
            self.embeds = self.embeds.clone()
            for (start, _), indices, values in zip(self.spans, reduction.kept, reduction.values):
                if values is not None:
                    self.embeds[start + indices] = values.to(self.embeds.dtype)
        self.original_index = [index[indices] for index, indices in zip(self.original_index, reduction.kept)]
        self.spans = _shrunk_spans(self.spans, reduction.kept)
        self.embeds = self.embeds[keep]
        self._rope = None
        if keep_positions:
            response_positions = self.positions[len(keep) :]
            self.positions = torch.cat([self.positions[: len(keep)][keep], response_positions])
        else:
            self.positions = torch.arange(self.prompt_length + self.gen_length, device=self.embeds.device)
        return keep

    def full_length_scores(self, scores: list[Tensor], sizes: list[int]) -> list[Tensor]:
        """Scores over the current visual tokens, placed at their original indices (NaN where pruned)."""
        out = []
        for values, index, size in zip(scores, self.original_index, sizes):
            full = torch.full((size,), float("nan"), device=values.device)
            full[index] = values.float()
            out.append(full.cpu())
        return out


def _merged_entries(reduction: Reduction, spans: list[tuple[int, int]], name: str) -> tuple[Tensor, Tensor]:
    """The (rows, into) pairs of :meth:`PrefixCache.merge` for a between-steps merge: every visual token of a merged
    image, at its prompt position, and the prompt position of the kept token it went into (``Reduction.sources``;
    one that leaves without a trace, −1, points at itself and is then dropped)."""
    if reduction.sources is None:
        raise ValueError(f"{name}: merging between steps under a cache needs Reduction.sources")
    rows, into = [], []
    for (start, end), kept, values, sources in zip(spans, reduction.kept, reduction.values, reduction.sources):
        if values is None:
            continue
        if sources is None:
            raise ValueError(f"{name}: a merged image needs Reduction.sources under a cache")
        positions = torch.arange(start, end, device=kept.device)
        rows.append(positions)
        into.append(torch.where(sources >= 0, start + kept[sources.clamp(min=0)], positions))
    return torch.cat(rows), torch.cat(into)


def _visual_positions(spans: list[tuple[int, int]], device: torch.device) -> Tensor:
    return torch.cat([torch.arange(s, e, device=device) for s, e in spans] or [torch.zeros(0, dtype=torch.long)]).to(
        device
    )


def _text_positions(spans: list[tuple[int, int]], prompt_length: int, device: torch.device) -> Tensor:
    is_text = torch.ones(prompt_length, dtype=torch.bool, device=device)
    is_text[_visual_positions(spans, device)] = False
    return is_text.nonzero().squeeze(1)


def _keep_mask(spans: list[tuple[int, int]], kept: list[Tensor], length: int, device: torch.device) -> Tensor:
    """(length,) boolean mask: every position outside the spans, and the kept indices within each span."""
    keep = torch.ones(length, dtype=torch.bool, device=device)
    for (start, end), indices in zip(spans, kept):
        keep[start:end] = False
        keep[start + indices] = True
    return keep


def _shrunk_spans(spans: list[tuple[int, int]], kept: list[Tensor]) -> list[tuple[int, int]]:
    out, removed = [], 0
    for (start, end), indices in zip(spans, kept):
        out.append((start - removed, start - removed + len(indices)))
        removed += (end - start) - len(indices)
    return out


def _check_reduction(reduction: Reduction | None, spans: list[tuple[int, int]], stage: str) -> Reduction | None:
    if reduction is None:
        return None
    if len(reduction.kept) != len(spans):
        raise ValueError(f"{stage}: the pruner returned {len(reduction.kept)} index lists for {len(spans)} images")
    for (start, end), indices in zip(spans, reduction.kept):
        if len(indices) and (indices.min() < 0 or indices.max() >= end - start or (indices.diff() <= 0).any()):
            raise ValueError(f"{stage}: kept indices must be sorted, distinct and within the image's {end - start}")
    return reduction


class _LayerHook:
    """One forward's :class:`~redvtp_eval.models.base.LayerHook`: records each layer's shape, hands the layers
    the between-steps probe (if any), calls the pruner's in-LM stage after its layers on the step it acts in,
    and replays the drops of an earlier ``in_lm_persist="layers"`` stage.

    Key positions are the forward's own: the prompt as it stands after this forward's drops, then the response.
    Uncached (Fast-dLLM's full forwards too), the rows are the keys and dropped rows leave the forward; with the
    prefix cache the rows are the response, and a drop removes the tokens from the cache of the remaining layers
    instead. Against Fast-dLLM's cache (a window) nothing acts or replays: each layer's entries already hold its rows.
    """

    def __init__(
        self,
        pruner: Pruner,
        step: int,
        sequence: _Sequence,
        masked: Tensor,
        cache: PrefixCache | None,
        probe: AttentionProbe | None,
        acting: tuple[int, ...],
        replay: dict[int, list[Tensor]],
        merges: dict[int, list[tuple[Tensor, Tensor] | None]] | None = None,
        rows: int | None = None,
        cached_response: int = 0,
    ) -> None:
        """``rows``: the forward's query rows (default: the whole sequence, or the response against the prefix
        cache); ``cached_response``: response entries held in ``cache`` (Fast-dLLM's caches hold some)."""
        self.pruner, self.step, self.cache, self.global_probe = pruner, step, cache, probe
        self.rows, self.cached_response = rows, cached_response
        self.spans = list(sequence.spans)
        self.original = list(sequence.original_index)
        self.prompt_length, self.gen_length = sequence.prompt_length, sequence.gen_length
        self.text_tokens = self.prompt_length - sum(end - start for start, end in self.spans)
        self.masked = masked
        """(gen_length,) boolean: the response positions masked when the step began."""
        self.acting = set(acting) if self.spans else set()
        self.replay = replay
        self.merges = merges or {}
        if probe is not None and (self.acting or self.replay):
            raise ValueError("a between-steps attention probe and drops inside the LM in one forward are not supported")
        self.probes: dict[int, AttentionProbe] = {}
        self.kept_after: dict[int, list[Tensor]] = {}
        """Per layer count K where the pruner's stage dropped (not replayed), the original indices kept per image."""
        self.merges_after: dict[int, list[tuple[Tensor, Tensor] | None]] = {}
        """Per such K, per image, the averages it wrote (:attr:`Reduction.sources`) in original indices, or None."""
        self.prompt_masks: list[tuple[int, Tensor]] = []
        """(K, boolean mask over the prompt as it stood) of every drop, in order."""
        self.layers: list[tuple[int, int, int]] = []
        self.probed: list[int] = []

    def context(
        self, layer: int, hidden: Tensor | None = None, attention: VisualAttention | None = None
    ) -> LayerContext:
        device = self.masked.device
        return LayerContext(
            step=self.step,
            layer=layer,
            visual_spans=list(self.spans),
            prompt_text=_text_positions(self.spans, self.prompt_length, device),
            response=torch.arange(self.gen_length, device=device) + self.prompt_length,
            masked=self.masked.nonzero().squeeze(1) + self.prompt_length,
            hidden=hidden,
            attention=attention,
            key_attention=attention.to_keys if attention is not None and self.pruner.in_lm_key_attention else None,
        )

    def probe(self, layer: int) -> AttentionProbe | None:
        cached = self.cache.layer_length(layer) if self.cache is not None else 0
        prompt = cached - self.cached_response if self.cache is not None else self.prompt_length
        rows = self.rows or (self.gen_length if self.cache is not None else self.prompt_length + self.gen_length)
        keys = cached + rows
        self.layers.append((rows, keys, prompt - self.text_tokens))
        probe = self.global_probe
        if layer + 1 in self.acting:
            queries = self.pruner.layer_queries(self.context(layer + 1))
            if queries is not None and self.cache is not None and (queries < prompt).any():
                raise ValueError(
                    f"{self.pruner.name}: no attention was recorded for prompt rows: with the prefix cache (prefix_lm) "
                    "only the response positions are queried; choose response queries (queries=masked)"
                )
            if queries is not None and len(queries):
                keys = _visual_positions(self.spans, queries.device)
                if self.pruner.in_lm_key_attention:
                    if self.cache is not None:
                        raise ValueError(
                            f"{self.pruner.name}: attention to the text keys is probed only without the prefix cache "
                            "(prefix_lm off)"
                        )
                    visual = torch.zeros(self.prompt_length + self.gen_length, dtype=torch.bool, device=keys.device)
                    visual[keys] = True
                    keys = torch.cat([keys, (~visual).nonzero().squeeze(1)])
                probe = self.probes[layer + 1] = AttentionProbe(queries, keys)
        self.probed.append(len(probe.rows) if probe is not None else 0)
        return probe

    def after_layer(self, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor] | None:
        count = layer + 1
        if count in self.acting:
            probe = self.probes.get(count)
            length, visual = self.prompt_length + self.gen_length, self.prompt_length - self.text_tokens
            attention = ProbedAttention(probe, length, visual) if probe is not None else None
            own = hidden if self.cache is None else None
            reduction = as_reduction(self.pruner.in_lm(self.context(count, own, attention)))
        elif count in self.replay:
            current = [
                torch.isin(now, kept).nonzero().squeeze(1) for now, kept in zip(self.original, self.replay[count])
            ]
            reduction = Reduction(current, self._replayed_values(count, current, hidden))
        else:
            return None
        reduction = _check_reduction(reduction, self.spans, f"{self.pruner.name} after layer {count}")
        if reduction is None:
            return None
        return self._drop(count, reduction, hidden)

    def _replayed_values(self, count: int, kept: list[Tensor], hidden: Tensor) -> list[Tensor | None] | None:
        """The averages the acting forward wrote after layer ``count``, redone on this forward's hidden states."""
        merges = self.merges.get(count)
        if merges is None:
            return None
        values: list[Tensor | None] = []
        for (start, end), now, indices, merge in zip(self.spans, self.original, kept, merges):
            if merge is None:
                values.append(None)
                continue
            members, into = merge
            current_of = torch.full((int(now.max()) + 1,), -1, dtype=torch.long, device=now.device)
            current_of[now] = torch.arange(len(now), device=now.device)
            slot_of = torch.full((end - start,), -1, dtype=torch.long, device=now.device)
            slot_of[indices] = torch.arange(len(indices), device=now.device)
            slots = slot_of[current_of[into]]
            sums = torch.zeros(len(indices), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
            sums.index_add_(0, slots, hidden[start + current_of[members]].float())
            counts = torch.bincount(slots, minlength=len(indices)).clamp(min=1)
            values.append(sums / counts[:, None])
        return values

    def _drop(self, count: int, reduction: Reduction, hidden: Tensor) -> tuple[Tensor, Tensor] | None:
        device = hidden.device
        prompt_keep = _keep_mask(self.spans, reduction.kept, self.prompt_length, device)
        if reduction.values is not None:
            if self.cache is not None:
                raise ValueError(
                    f"{self.pruner.name}: merging inside the LM needs the uncached forward (prefix_lm off)"
                )
            hidden = hidden.clone()
            for (start, _), indices, values in zip(self.spans, reduction.kept, reduction.values):
                if values is not None:
                    hidden[start + indices] = values.to(hidden.dtype)
        if count in self.acting and reduction.sources is not None and reduction.values is not None:
            merged = []
            for now, indices, sources in zip(self.original, reduction.kept, reduction.sources):
                averaged = (sources >= 0).nonzero().squeeze(1) if sources is not None else None
                merged.append((now[averaged], now[indices[sources[averaged]]]) if averaged is not None else None)
            self.merges_after[count] = merged
        self.original = [now[indices] for now, indices in zip(self.original, reduction.kept)]
        self.spans = _shrunk_spans(self.spans, reduction.kept)
        self.prompt_length = int(prompt_keep.sum())
        if count in self.acting:
            self.kept_after[count] = list(self.original)
            self.prompt_masks.append((count, prompt_keep))
        if self.cache is not None:
            self.cache.keep(prompt_keep, range(count, len(self.cache.keys)))
            return None
        keep = torch.cat([prompt_keep, torch.ones(self.gen_length, dtype=torch.bool, device=device)])
        return hidden[keep], keep


def _block_cache(filled: PrefixCache, lo: int, hi: int, settings: GenerationSettings) -> PrefixCache:
    """Fast-dLLM's cache for block [lo, hi) of the response from a full forward's keys/values: every position
    before the block (``prefix``), or every position outside it (``dual``). Layers after an in-LM drop hold
    fewer prompt rows; they are a contiguous run per prompt length (drops only shrink it), each cut by one index."""
    filled.close()
    device, end = filled.keys[0].device, hi if settings.fast_dllm == "dual" else settings.gen_length
    lengths, first = [filled.layer_length(layer) for layer in range(len(filled.keys))], 0
    for length, run in itertools.groupby(lengths):
        layers = range(first, first + len(list(run)))
        prompt = length - settings.gen_length
        # an index, not a boolean mask: indexing by a mask would wait for the device to count it
        index = torch.arange(prompt + lo, device=device), torch.arange(prompt + end, length, device=device)
        filled.keep(torch.cat(index), layers)
        first = layers.stop
    return filled


def _gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """argmax of exp(logits) / (−log u)^T in float64: the official Gumbel-max sampling; plain argmax at T = 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    noise = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


def _confidence(logits: Tensor, x0: Tensor, remasking: str, generator: torch.Generator | None) -> Tensor:
    """Per position, how sure the step is of x0 (float64): the higher, the earlier it is committed."""
    if remasking == "random":
        return torch.rand(len(x0), generator=generator, dtype=torch.float64, device=x0.device)
    probs = torch.softmax(logits.double(), dim=-1)
    if remasking == "low_confidence":
        return probs.gather(1, x0[:, None]).squeeze(1)
    if remasking == "margin":
        top = probs.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    return (probs * torch.log(probs + 1e-10)).sum(dim=-1)


def _first_stop(tokens: Tensor, stop_sequences: list[Tensor]) -> Tensor:
    """Index in the response where the earliest complete stop sequence starts, ``len(tokens)`` if none: a 0-d
    tensor, so that the search does not wait for the device."""
    first = torch.tensor(len(tokens), device=tokens.device)
    for sequence in stop_sequences:
        if len(sequence) <= len(tokens):
            hits = (tokens.unfold(0, len(sequence), 1) == sequence).all(dim=1)
            starts = torch.where(hits, torch.arange(len(hits), device=tokens.device), len(tokens))
            first = torch.minimum(first, starts.min())
    return first


def _read(values: Tensor) -> list[int]:
    """The step loop's one wait for the device per step (a small integer vector copied to the host)."""
    return values.tolist()


class ProbedAttention:
    """The :class:`~redvtp_eval.pruners.base.VisualAttention` a pruner gets: read from one forward's probe.

    Query positions must be outside the visual spans: the sampler records every such row, so any query set
    can be asked for after the step has committed its tokens.

    ``visual``: the probe's first columns that are the visual tokens; any columns after them are other key
    positions (``probe.cols``), read by :meth:`to_keys` (the :class:`~redvtp_eval.pruners.base.KeyAttention`).
    """

    def __init__(self, probe: AttentionProbe, sequence_length: int, visual: int | None = None) -> None:
        self._mean = probe.mean()
        self._visual = self._mean.shape[1] if visual is None else visual
        device = probe.rows.device
        self._row_of = torch.full((sequence_length,), -1, dtype=torch.long, device=device)
        self._row_of[probe.rows] = torch.arange(len(probe.rows), device=device)
        self._column_of = torch.full((sequence_length,), -1, dtype=torch.long, device=device)
        self._column_of[probe.cols[self._visual :]] = torch.arange(self._visual, len(probe.cols), device=device)

    def _rows(self, queries: Tensor) -> Tensor:
        rows = self._row_of[queries]
        if (rows < 0).any():
            raise ValueError(
                "no attention was recorded for some query positions: rows are the non-visual positions of the "
                "step's forward: with the prefix cache (prefix_lm) only the response positions are queried, in a "
                "Fast-dLLM window step only the window's"
            )
        return rows

    def __call__(self, queries: Tensor) -> Tensor:
        return self._mean[self._rows(queries), : self._visual]

    def to_keys(self, queries: Tensor, keys: Tensor) -> Tensor:
        columns = self._column_of[keys]
        if (columns < 0).any():
            raise ValueError("no attention was recorded to some key positions: only the non-visual ones are probed")
        return self._mean[self._rows(queries)][:, columns]


@torch.no_grad()
def generate(
    model: DiffusionVLM,
    prompt: Prompt,
    settings: GenerationSettings,
    pruner: Pruner | None = None,
    generator: torch.Generator | None = None,
    region: list[Tensor | None] | None = None,
) -> Generation:
    """Fill ``settings.gen_length`` masked positions after ``prompt``; batch size 1. ``region``: per image, a
    boolean mask of the visual tokens that show the answer, for the pruners that are told (oracles).

    On CUDA, a model whose official loop runs under autocast (``model.autocast_dtype``: LLaDA-V's
    ``torch.cuda.amp.autocast()``, float16) runs the whole loop under it when its weights are in that dtype,
    so softmax, norms and reductions take autocast's float32 route as there; a ``model.dtype`` override
    (e.g. bfloat16) turns it off, and on the CPU it does nothing (the official context is CUDA-only)."""
    autocast = official_autocast(model)
    with torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None):
        return _generate(model, prompt, settings, pruner, generator, region)


def official_autocast(model: DiffusionVLM) -> torch.dtype | None:
    """The autocast dtype :func:`generate` runs under: the model's official one, on CUDA, in its own dtype."""
    autocast = model.autocast_dtype
    return autocast if model.device.type == "cuda" and autocast == model.dtype else None


def _generate(
    model: DiffusionVLM,
    prompt: Prompt,
    settings: GenerationSettings,
    pruner: Pruner | None,
    generator: torch.Generator | None,
    region: list[Tensor | None] | None,
) -> Generation:
    pruner = pruner or Pruner()
    device = model.device
    timer = Timer(device)
    mask_id = model.mask_token_id
    suppressed = torch.tensor(model.suppressed_token_ids, dtype=torch.long, device=device)
    stop_sequences = [torch.tensor(model.encode_text(s), device=device) for s in settings.stop_strings]
    stop_sequences = [sequence for sequence in stop_sequences if len(sequence)]
    sizes = [end - start for start, end in prompt.visual_spans]
    sequence = _Sequence(prompt, settings.gen_length)
    tokens = torch.full((settings.gen_length,), mask_id, dtype=torch.long, device=device)
    record = GenerationRecord(
        prompt_tokens=sequence.prompt_length,
        visual_tokens_before=prompt.visual_tokens,
        visual_tokens_after=prompt.visual_tokens,
        crops=prompt.crops,
        seconds=dict(prompt.seconds),
    )

    def pruned(where: str) -> None:
        record.pruned_at.append(where)
        record.kept_visual = [index.tolist() for index in sequence.original_index]
        record.visual_tokens_after = sum(len(index) for index in sequence.original_index)

    # Stage 1: before the language model, on the projected visual features (and the prompt's text embeddings).
    if pruner.needs_tower_attention and sequence.spans and prompt.tower_attention is None:
        raise ValueError(
            f"pruner {pruner.name!r} reads the vision tower's attention, which this prompt lacks: prepare it with "
            "model.prepare(..., tower_layer=pruner.tower_attention_layer())"
        )
    if sequence.spans:
        with timer("prune"):
            visual = VisualInput(
                features=[sequence.embeds[start:end] for start, end in sequence.spans],
                text=sequence.embeds[sequence.prompt_text()],
                grids=list(prompt.visual_grids),
                region=region,
                generator=generator,
                tower_attention=prompt.tower_attention if pruner.needs_tower_attention else None,
                crops=prompt.token_crops,
            )
            reduction = _check_reduction(as_reduction(pruner.before_lm(visual)), sequence.spans, pruner.name)
            if reduction is not None:
                sequence.keep(reduction, pruner.keep_positions)
                pruned("before_lm")

    steps_per_block = settings.steps // settings.num_blocks
    stop_at: int | None = None
    first_token = 0
    """1 when Dream's first answer token was taken from the prompt pass (it is not masked at the first step)."""
    cache = None
    replay: dict[int, list[Tensor]] = {}
    """Drops inside the LM that every later forward repeats (``in_lm_persist="layers"``, uncached)."""
    merges: dict[int, list[tuple[Tensor, Tensor] | None]] = {}
    """The averages those drops wrote (``Reduction.sources``), which the replays redo: per layer count, per image,
    (original index of each averaged token, original index of the kept token it went into)."""
    if settings.prefix_cache:
        with timer("prefill"):
            cache, last_logits = model.prefill(sequence.embeds, sequence.positions[: sequence.prompt_length])
            if model.shifted_logits:
                tokens[0] = last_logits.argmax()
                first_token = int(tokens[0] != mask_id)  # one read, before the loop
        length, visual_count = sequence.prompt_length, sum(len(index) for index in sequence.original_index)
        record.forwards.append(
            ForwardShape("prefill", [(length, length, visual_count)] * len(cache.keys), 1, [0] * len(cache.keys))
        )
    fast = settings.fast_dllm != "none"
    fast_cache: PrefixCache | None = None
    """Fast-dLLM's cache of the current block (filled by its last full forward)."""
    if fast and model.shifted_logits:
        raise ValueError("fast_dllm follows Fast-dLLM's LLaDA rules; a shifted-logits model (Dream) is not supported")
    lm_layers = tuple(pruner.lm_layers(model.num_layers))
    if any(not 1 <= layer < model.num_layers for layer in lm_layers):
        raise ValueError(f"pruner {pruner.name!r} acts after layers {lm_layers}; the model has {model.num_layers}")
    if lm_layers and cache is not None and pruner.in_lm_needs_hidden:
        raise ValueError(
            f"pruner {pruner.name!r} reads visual hidden states inside the LM, which a prefix-cached step does not "
            "compute; run it with prefix_lm off"
        )

    for block in range(settings.num_blocks):
        lo, hi = block * settings.block_length, (block + 1) * settings.block_length
        if (stop_at is not None and stop_at <= lo) or record.steps == settings.step_limit:
            break
        # Commits never reach past the current block, so every position of a block is masked when it starts (but
        # Dream's first token, taken from the prompt pass), and no stop string has been found yet (one found in an
        # earlier block ended the loop above). The host keeps these counts, read once per step below.
        masked_in_block = settings.block_length - (first_token if block == 0 else 0)
        block_masked, candidate_count, masked_before_stop = masked_in_block, masked_in_block, None
        schedule = transfer_schedule(masked_in_block, steps_per_block, settings.schedule, settings.shift)
        block_steps = steps_per_block if settings.threshold is None else settings.block_length
        for block_step in range(block_steps):
            if masked_before_stop == 0 or block_masked == 0 or record.steps == settings.step_limit:
                break
            masked = tokens == mask_id
            record.steps += 1
            prune_now = pruner.acts_after(record.steps, settings.steps)
            # Fast-dLLM: a refresh step is a full forward that fills the block's cache; the others run a window.
            refresh = fast and block_step % (settings.refresh_every or block_steps) == 0
            w_lo, w_hi = 0, settings.gen_length
            if fast and not refresh:
                w_lo, w_hi = lo, (settings.gen_length if settings.fast_dllm == "prefix" else hi)
            step_cache = cache if cache is not None else (fast_cache if fast and not refresh else None)
            probe = None
            if pruner.needs_attention and (prune_now or pruner.record_scores) and sequence.spans:
                if fast and not refresh:
                    # A pruner acting now reads the window's rows, against a cache that begins with the prompt;
                    # recorded scores (record_scores) stay the full forwards', as a window lacks most rows.
                    if prune_now:
                        first = sequence.prompt_length + w_lo
                        rows = torch.arange(first, sequence.prompt_length + w_hi, device=device)
                        probe = AttentionProbe(rows, sequence.visual(), first_query=first)
                else:
                    rows = (
                        sequence.response
                        if cache is not None
                        else torch.cat([sequence.prompt_text(), sequence.response])
                    )
                    probe = AttentionProbe(rows, sequence.visual())
            acting = lm_layers if record.steps == pruner.in_lm_step else ()
            if acting and fast and not refresh:
                raise ValueError(
                    f"pruner {pruner.name!r} acts inside the LM at step {record.steps}, which runs against Fast-dLLM's "
                    "cache; an in-LM stage needs a full forward (a block's first step, refresh_every)"
                )
            hook = _LayerHook(
                pruner,
                record.steps,
                sequence,
                masked,
                step_cache,
                probe,
                acting,
                {} if fast and not refresh else replay,
                merges,
                rows=w_hi - w_lo if fast and not refresh else None,
                cached_response=settings.gen_length - (w_hi - w_lo) if fast and not refresh else 0,
            )

            # The positions this step may commit: masked, in the block, before a stop string. Only their logits are
            # computed (the LM head and the float64 softmax over the vocabulary are per position, so the others'
            # would be thrown away), in the window coordinates of the forward below. Their count is known on the
            # host, so finding them does not wait for the device.
            end = min(hi, stop_at) if stop_at is not None else hi
            candidates = torch.nonzero_static(masked[lo:end], size=candidate_count).squeeze(1) + lo
            rope = sequence.rope(model)

            # Stage 2 runs inside this forward, through the hook.
            with timer("step"):
                if step_cache is None:
                    embeds = torch.cat([sequence.embeds, model.embed(tokens)])
                    filling = PrefixCache() if refresh else None
                    at = sequence.prompt_length + candidates
                    logits = model.logits(embeds, sequence.positions, at, hook=hook, cache=filling, rope=rope)
                    if filling is not None:
                        fast_cache = _block_cache(filling, lo, hi, settings)
                    record.step_forward.append((len(embeds), len(embeds)))
                else:
                    span = slice(sequence.prompt_length + w_lo, sequence.prompt_length + w_hi)
                    window, window_rope = sequence.positions[span], tuple(part[:, span] for part in rope)
                    at = candidates - w_lo
                    embeds = model.embed(tokens[w_lo:w_hi])
                    logits = model.logits(embeds, window, at, hook=hook, cache=step_cache, rope=window_rope)
                    record.step_forward.append((w_hi - w_lo, step_cache.length + w_hi - w_lo))
                logits[:, suppressed] = float("-inf")  # every candidate is masked
                x0 = tokens.clone()
                x0[candidates] = _gumbel_argmax(logits, settings.temperature, generator)
                scored = _confidence(logits, x0[candidates], settings.remasking, generator)
                confidence = torch.full((settings.gen_length,), float("-inf"), dtype=scored.dtype, device=device)
                confidence[candidates] = scored
                commit = torch.zeros(settings.gen_length, dtype=torch.bool, device=device)
                if settings.threshold is None:
                    commit[torch.topk(confidence, min(schedule[block_step], candidate_count)).indices] = True
                else:
                    commit = confidence >= settings.threshold
                    commit[torch.topk(confidence, 1).indices] = True  # the most confident one in any case
                tokens = torch.where(commit, x0, tokens)
                left = tokens == mask_id
                stop = _first_stop(tokens, stop_sequences)
                if stop_at is not None:
                    stop = torch.clamp(stop, max=stop_at)
                before_stop = left & (torch.arange(settings.gen_length, device=device) < stop)
                outcome = torch.stack(
                    [commit.sum(), stop, before_stop.sum(), left[lo:hi].sum(), before_stop[lo:hi].sum()]
                )
            # The step's one read of the device: what it committed, where the answer stops, and what is left masked
            # (in the answer, in the block, among the next step's candidates), which the loop's end and the next
            # step's shapes depend on.
            count, found, masked_before_stop, block_masked, candidate_count = _read(outcome)
            if found < settings.gen_length:
                stop_at = found
            else:
                masked_before_stop = None
            record.unmasked_per_step.append(count)
            record.forwards.append(ForwardShape("step", hook.layers, len(candidates), hook.probed))

            if hook.kept_after:
                with timer("prune"):
                    last = max(hook.kept_after)
                    if pruner.in_lm_persist == "layers":
                        if cache is None:
                            replay.update(hook.kept_after)
                            merges.update(hook.merges_after)
                        record.kept_visual = [index.tolist() for index in hook.kept_after[last]]
                        record.visual_tokens_after = sum(len(index) for index in hook.kept_after[last])
                        record.pruned_at.append(
                            f"step{record.steps}/layer{'+'.join(map(str, sorted(hook.kept_after)))}"
                        )
                    else:
                        current = sequence.current(hook.kept_after[last])
                        sequence.keep(Reduction(current), pruner.keep_positions or cache is not None or fast)
                        for layer_count, mask in hook.prompt_masks:
                            if cache is not None:
                                cache.keep(mask, range(layer_count))
                            if fast_cache is not None:  # the cached response entries follow the prompt's
                                response = mask.new_ones(fast_cache.layer_length(0) - len(mask))
                                fast_cache.keep(torch.cat([mask, response]), range(layer_count))
                        pruned(f"step{record.steps}/layer{'+'.join(map(str, sorted(hook.kept_after)))}")

            # Stage 3: between this step and the next.
            if probe is None and not prune_now:
                continue
            with timer("prune"):
                context = PruneContext(
                    step=record.steps,
                    visual_spans=list(sequence.spans),
                    masked=(tokens == mask_id).nonzero().squeeze(1) + sequence.prompt_length,
                    decoded=commit.nonzero().squeeze(1) + sequence.prompt_length,
                    response=sequence.response,
                    prompt_text=sequence.prompt_text(),
                    attention=(
                        ProbedAttention(probe, sequence.prompt_length + settings.gen_length)
                        if probe is not None
                        else None
                    ),
                    generator=generator,
                    embeds=sequence.embeds,
                    region=region,
                    original_index=list(sequence.original_index),
                    original_sizes=sizes,
                    total_steps=settings.steps,
                )
                if pruner.record_scores:
                    scores = pruner.scores(context)
                    record.scores.append(sequence.full_length_scores(scores, sizes) if scores else [])
                if prune_now:
                    reduction = _check_reduction(as_reduction(pruner.select(context)), sequence.spans, pruner.name)
                    if reduction is not None:
                        caches = [c for c in (cache, fast_cache) if c is not None]
                        if reduction.values is not None and caches:
                            rows, into = _merged_entries(reduction, sequence.spans, pruner.name)
                            for merged in caches:
                                merged.merge(rows, into)
                        prompt_kept = sequence.keep(reduction, pruner.keep_positions or cache is not None or fast)
                        if cache is not None:
                            cache.keep(prompt_kept)
                        if fast_cache is not None:
                            if replay:
                                raise ValueError(
                                    f"pruner {pruner.name!r} drops after some layers only (in_lm_persist='layers') "
                                    "and between steps, which Fast-dLLM's cache of uneven layers cannot follow"
                                )
                            cached_response = fast_cache.length - len(prompt_kept)
                            fast_cache.keep(torch.cat([prompt_kept, prompt_kept.new_ones(cached_response)]))
                        if record.pruned_after_step is None:
                            record.pruned_after_step = record.steps
                        pruned(f"after_step{record.steps}")

    record.stop_position = stop_at
    record.step_seconds = timer.intervals("step")
    record.seconds["denoise"] = sum(record.step_seconds)
    record.seconds["first_step"] = record.step_seconds[0] if record.step_seconds else 0.0
    record.seconds["prune"] = timer.seconds.get("prune", 0.0)
    record.seconds["prefill"] = timer.seconds.get("prefill", 0.0)
    token_ids = tokens[:stop_at].tolist() if stop_at is not None else tokens.tolist()
    record.answer_tokens = sum(token not in model.special_token_ids for token in token_ids)
    return Generation(text=model.decode(token_ids), token_ids=token_ids, record=record)
