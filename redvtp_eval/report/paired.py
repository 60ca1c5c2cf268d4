"""The pruned model against the unpruned one on the same samples: mean difference and its uncertainty.

Where it sits: the report calls :func:`paired_difference` once per job, on the per-sample scores of the
job's two sides (``samples.jsonl``: ``score`` and ``baseline.score``). The 95% interval is a percentile
bootstrap of the mean difference (scipy); lmms-eval's own paired t-test adds its p-value, so the two
agree on what "paired" means with lmms-eval's ``--baseline`` comparison. :func:`stratified_difference` does the
same for a row of several benchmarks (the rivals table): the mean over benchmarks of each one's mean difference,
every benchmark resampled on its own.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import bootstrap

RESAMPLES = 10_000


def paired_difference(pruned: list[float], unpruned: list[float], seed: int = 0) -> dict:
    """Mean of ``pruned - unpruned`` with a 95% bootstrap interval and the paired t-test's p-value."""
    from lmms_eval.api.metrics import paired_ttest

    differences = np.asarray(pruned, dtype=float) - np.asarray(unpruned, dtype=float)
    if len(differences) == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "p_value": None}
    mean = float(differences.mean())
    low = high = mean if len(differences) > 1 else None
    if len(differences) > 1 and np.ptp(differences) > 0:
        interval = bootstrap(
            (differences,),
            np.mean,
            n_resamples=RESAMPLES,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    p_value = paired_ttest(list(map(float, pruned)), list(map(float, unpruned)))["p_value"]
    return {
        "n": len(differences),
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "p_value": None if math.isnan(p_value) else float(p_value),
    }


def _mean_of_means(*samples, axis=-1):
    return np.mean([sample.mean(axis=axis) for sample in samples], axis=0)


def stratified_difference(groups: list[list[float]], seed: int = 0) -> dict:
    """Mean over ``groups`` (one per benchmark) of each group's mean paired difference, with a 95% percentile
    bootstrap that resamples every group within itself (a stratified bootstrap: each benchmark keeps its size and
    its weight 1/len(groups)). For one group it is :func:`paired_difference`'s mean and interval."""
    groups = [np.asarray(group, dtype=float) for group in groups]
    if not groups or any(len(group) == 0 for group in groups):
        return {"n": sum(map(len, groups)), "mean": None, "ci_low": None, "ci_high": None}
    mean = float(_mean_of_means(*groups))
    low = high = mean if all(len(group) > 1 for group in groups) else None
    if low is not None and any(np.ptp(group) > 0 for group in groups):
        interval = bootstrap(
            tuple(groups),
            _mean_of_means,
            n_resamples=RESAMPLES,
            batch=1000,  # bounds memory: 1000 resamples of the largest benchmark at a time
            vectorized=True,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return {"n": sum(map(len, groups)), "mean": mean, "ci_low": low, "ci_high": high}
