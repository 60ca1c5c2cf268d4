"""The step loop against a naive transliteration of the official loop, and the host reads it makes per step.

The reference recomputes everything every step the way the official ``generate_with_embeds`` does: RoPE for
the whole sequence, logits at every response position, the float64 softmax over the vocabulary, ``topk`` over
the response, the stop string searched on the host. The sampler must give the same tokens and counts while
reading the device once per step.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import page
from torch.utils._python_dispatch import TorchDispatchMode

from redvtp_eval.engine import sampler
from redvtp_eval.engine.sampler import GenerationSettings, generate, transfer_schedule
from redvtp_eval.pruners import make_pruner


def naive_generate(model, prompt, settings: GenerationSettings) -> tuple[list[int], list[int]]:
    """Tokens and per-step commit counts, recomputing everything each step (one stop string at most)."""
    gen, mask_id, length = settings.gen_length, model.mask_token_id, len(prompt.embeds)
    tokens = torch.full((gen,), mask_id, dtype=torch.long)
    stop = [model.encode_text(s) for s in settings.stop_strings]
    stop_at, counts, per_block = None, [], settings.steps // settings.num_blocks
    for block in range(settings.num_blocks):
        lo, hi = block * settings.block_length, (block + 1) * settings.block_length
        if stop_at is not None and stop_at <= lo:
            break
        schedule = transfer_schedule(int((tokens[lo:hi] == mask_id).sum()), per_block)
        for step in range(per_block if settings.threshold is None else settings.block_length):
            masked = tokens == mask_id
            if (stop_at is not None and not masked[:stop_at].any()) or not masked[lo:hi].any():
                break
            embeds = torch.cat([prompt.embeds, model.embed(tokens)])
            logits = model.logits(embeds, torch.arange(length + gen), torch.arange(length, length + gen))
            logits[:, list(model.suppressed_token_ids)] = torch.where(
                masked[:, None], float("-inf"), logits[:, list(model.suppressed_token_ids)]
            )
            x0 = logits.argmax(dim=-1)
            probability = torch.softmax(logits.double(), dim=-1).gather(1, x0[:, None]).squeeze(1)
            allowed = masked.clone()
            allowed[min(hi, stop_at) if stop_at is not None else hi :] = False
            allowed[:lo] = False
            confidence = torch.where(allowed, probability, float("-inf"))
            if settings.threshold is None:
                count = min(schedule[step], int(allowed.sum()))
            else:
                count = max(1, int((confidence >= settings.threshold).sum()))
            chosen = torch.topk(confidence, count).indices
            tokens[chosen] = x0[chosen]
            counts.append(count)
            for sequence in stop:
                ids = tokens.tolist()
                hits = [i for i in range(gen - len(sequence) + 1) if ids[i : i + len(sequence)] == sequence]
                if hits and (stop_at is None or hits[0] < stop_at):
                    stop_at = hits[0]
    ids = tokens.tolist()
    return (ids[:stop_at] if stop_at is not None else ids), counts


@pytest.fixture(scope="module")
def prompt(tiny):
    return tiny.prepare("What is the total?", [page((384, 192))], "no_think")


def stop_string(tiny, prompt) -> str:
    """A token the free run commits in its middle, so that a stop string ends the answer early."""
    free = generate(tiny, prompt, GenerationSettings(16, 8, 8, stop_strings=()))
    return tiny.tokenizer.decode([free.token_ids[5]])


SETTINGS = [
    GenerationSettings(16, 8, 16, stop_strings=()),
    GenerationSettings(16, 8, 4, stop_strings=()),
    GenerationSettings(12, 6, 12, stop_strings=()),
    GenerationSettings(16, 16, 8, stop_strings=(), threshold=0.02),
    GenerationSettings(16, 16, 16, stop_strings=(), threshold=0.0),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_sampler_gives_the_naive_official_loops_tokens(tiny, prompt, settings):
    result = generate(tiny, prompt, settings)
    assert (result.token_ids, result.record.unmasked_per_step) == naive_generate(tiny, prompt, settings)


@pytest.mark.parametrize("threshold", [None, 0.02])
def test_with_a_stop_string_too(tiny, prompt, threshold):
    settings = GenerationSettings(16, 8, 8, stop_strings=(stop_string(tiny, prompt),), threshold=threshold)
    result = generate(tiny, prompt, settings)
    assert result.record.stop_position is not None and result.record.stop_position < 16
    assert (result.token_ids, result.record.unmasked_per_step) == naive_generate(tiny, prompt, settings)


WAITS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"}
"""Operators that make the host wait for a CUDA device (``.item()``/``int()``/``bool()`` of a tensor, and the
ones whose output shape depends on the data); ``nonzero_static`` is not among them."""


class CountWaits(TorchDispatchMode):
    """Counts the operators in :data:`WAITS`, and boolean-mask indexing (a ``nonzero`` inside the kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masks = [a for a in args if isinstance(a, (list, tuple)) for t in a if getattr(t, "dtype", None) == torch.bool]
        self.waits += name in WAITS or (name.startswith("index") and bool(masks))
        return func(*args, **(kwargs or {}))


def waits_and_reads(model, prompt, settings, monkeypatch, pruner=None) -> tuple[int, int, int]:
    """(waits outside the sampler's read, the sampler's reads, steps) of one generation."""
    reads = []
    monkeypatch.setattr(sampler, "_read", lambda values: reads.append(1) or values.tolist())
    with CountWaits() as counter:
        record = generate(model, prompt, settings, pruner).record
    return counter.waits, len(reads), record.steps


@pytest.mark.parametrize("changes", [{}, {"stop_strings": "stop"}, {"fast_dllm": "dual"}, {"threshold": 0.02}])
def test_the_step_loop_reads_the_device_once_per_step(tiny, prompt, monkeypatch, changes):
    """Other waits happen where the (here no-op) pruner's stages build their contexts, once per generation: they do
    not grow with the steps."""
    if "stop_strings" in changes:
        changes = {"stop_strings": (stop_string(tiny, prompt),)}
    few = waits_and_reads(tiny, prompt, replace(GenerationSettings(8, 4, 8, stop_strings=()), **changes), monkeypatch)
    many = waits_and_reads(
        tiny, prompt, replace(GenerationSettings(16, 16, 8, stop_strings=()), **changes), monkeypatch
    )
    assert few[1] == few[2] and many[1] == many[2] > few[2]
    assert few[0] == many[0]


def test_pruning_adds_waits_on_its_step_only(tiny, prompt, monkeypatch):
    pruner = make_pruner("redvtp", ratio=0.25)
    few = waits_and_reads(tiny, prompt, GenerationSettings(8, 4, 8, stop_strings=()), monkeypatch, pruner)
    many = waits_and_reads(tiny, prompt, GenerationSettings(16, 16, 8, stop_strings=()), monkeypatch, pruner)
    assert few[0] == many[0] and many[1] == many[2] == 16


def rope_calls(model, prompt, settings, pruner, monkeypatch) -> int:
    rotary = model.network.model.rotary_emb
    calls = []
    monkeypatch.setattr(rotary, "forward", lambda *args, forward=rotary.forward: calls.append(1) or forward(*args))
    generate(model, prompt, settings, pruner)
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize(
    ("pruner", "changes", "tables"),
    [
        (None, {}, 1),
        (None, {"fast_dllm": "dual"}, 1),
        ("renumbered", {}, 2),  # pruning renumbers the positions: one more table
        ("kept", {"fast_dllm": "prefix"}, 2),  # the original positions of the tokens kept: a new layout too
    ],
)
def test_rope_tables_are_computed_once_per_position_layout(tiny, prompt, monkeypatch, pruner, changes, tables):
    settings = replace(GenerationSettings(16, 8, 8, stop_strings=()), **changes)
    chosen = {None: None, "renumbered": make_pruner("redvtp", ratio=0.25), "kept": make_pruner("redvtp", ratio=0.25)}
    assert rope_calls(tiny, prompt, settings, chosen[pruner], monkeypatch) == tables
