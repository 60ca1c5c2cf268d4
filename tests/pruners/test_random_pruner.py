from __future__ import annotations

import torch
from helpers import page

from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.pruners import make_pruner

SETTINGS = GenerationSettings(8, 4, 8, stop_strings=())


def kept(tiny, prompt, seed, ratio=0.25):
    generator = torch.Generator().manual_seed(seed)
    return generate(tiny, prompt, SETTINGS, make_pruner("random", ratio=ratio), generator).record.kept_visual


def test_random_keeps_the_same_count_as_redvtp_and_depends_only_on_the_seed(tiny):
    prompt = tiny.prepare("Q", [page()])
    first, again, other = kept(tiny, prompt, 1), kept(tiny, prompt, 1), kept(tiny, prompt, 2)
    assert len(first[0]) == int(1485 * 0.25) and first[0] == sorted(set(first[0]))
    assert first == again and first != other
    redvtp = generate(tiny, prompt, SETTINGS, make_pruner("redvtp", ratio=0.25)).record.kept_visual
    assert len(redvtp[0]) == len(first[0])


def test_random_draws_are_uniform_over_positions(tiny):
    prompt = tiny.prepare("Q", [page()])
    counts = torch.zeros(1485)
    for seed in range(40):
        counts[kept(tiny, prompt, seed, ratio=0.5)[0]] += 1
    halves = counts.view(-1, 1485 // 5).sum(dim=1) / (40 * 742 / 5)
    assert torch.allclose(halves, torch.ones(5), atol=0.1)


def test_pruner_options_are_checked_by_name():
    import pytest

    with pytest.raises(ValueError, match="pruner 'random' has no option query_set; its options: ratio, seed"):
        make_pruner("random", ratio=0.5, query_set="masked")
    with pytest.raises(ValueError, match="pruner 'none' has no option ratio"):
        make_pruner("none", ratio=0.5)


def test_the_option_list_names_only_real_options():
    """`pruner=none,ratio=0.5` used to list `args, kwargs` (object.__init__'s) among the options."""
    import pytest

    from redvtp_eval.pruners import make_pruner, options_of
    from redvtp_eval.pruners.base import Pruner

    assert options_of(Pruner) == ["prune_after_step", "keep_positions", "record_scores"]
    with pytest.raises(ValueError, match="its options: prune_after_step, keep_positions, record_scores$"):
        make_pruner("none", ratio=0.5)
