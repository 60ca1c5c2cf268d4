"""The paper's Figure 3 (which visual tokens RedVTP keeps, drawn over the image) and Figure 4 (how stable
the importance scores are across denoising steps), as functions the notebooks in ``notebooks/`` call.

Where it sits: runs the engine directly (model + pruner + sampler), like :mod:`redvtp_eval.toy.analysis`,
since lmms-eval never sees token positions or scores.

- :func:`kept_tokens` / :func:`draw_kept_tokens`: RedVTP at ratio r on one image; every visual token's
  image region (:func:`~redvtp_eval.models.anyres.token_boxes`) is left clear when kept and greyed when
  pruned — the base view and the high-resolution tiles in two panels, as the model sees them.
- :func:`score_similarity`: the cosine similarity between the score vector S_k after step k and S_1,
  recorded with ``record_scores`` over an unpruned generation (ratio 1.0), so that every step scores
  every visual token. Stop strings are switched off so that all ``steps`` steps run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from redvtp_eval.engine.sampler import GenerationSettings, generate
from redvtp_eval.models import anyres
from redvtp_eval.models.llada_v import LladaV
from redvtp_eval.pruners import make_pruner


def token_regions(model: LladaV, image: Image.Image) -> list:
    """The image region each visual token of a one-image LLaDA-V prompt covers (None: a newline token)."""
    vision = model.config.vision
    return anyres.token_boxes(
        image.size, model.config.image_grid_pinpoints, vision.image_size, vision.patch_size, model.max_crops
    )


def kept_tokens(model: LladaV, question: str, image: Image.Image, settings: GenerationSettings, ratio: float) -> list:
    """Indices of the image's visual tokens that RedVTP keeps at ``ratio`` (all of them when it prunes nothing)."""
    prompt = model.prepare(question, [image])
    record = generate(model, prompt, settings, make_pruner("redvtp", ratio=ratio)).record
    return record.kept_visual[0] if record.kept_visual is not None else list(range(prompt.visual_tokens))


def draw_kept_tokens(axes, model: LladaV, image: Image.Image, kept: list[int], title: str = "") -> int:
    """Base view on ``axes[0]``, tiles on ``axes[1]``, pruned regions greyed; returns how many were greyed."""
    regions = token_regions(model, image)
    unit = model.config.vision.image_size // model.config.vision.patch_size
    kept = set(kept)
    greyed = 0
    for axis, name, indices in (
        (axes[0], "base view", range(unit * unit)),
        (axes[1], "tiles", range(unit * unit, len(regions))),
    ):
        axis.imshow(image)
        axis.set_title(f"{title} {name}".strip())
        axis.axis("off")
        for index in indices:
            box = regions[index]
            if box is None or index in kept:
                continue
            left, top, right, bottom = box
            axis.add_patch(Rectangle((left, top), right - left, bottom - top, color="black", alpha=0.55, linewidth=0))
            greyed += 1
    return greyed


def cosine_to_first(scores: list[torch.Tensor]) -> list[float]:
    """cos(S_k, S_1) for every recorded step k (1.0 at k = 1)."""
    first = scores[0].double()
    return [float(torch.nn.functional.cosine_similarity(s.double(), first, dim=0)) for s in scores]


def score_similarity(
    model: LladaV, question: str, image: Image.Image, settings: GenerationSettings, query_set: str = "masked"
) -> list[float]:
    """cos(S_k, S_1) over the steps of one unpruned generation that still had queries to score with."""
    prompt = model.prepare(question, [image])
    pruner = make_pruner("redvtp", ratio=1.0, query_set=query_set, record_scores=True)
    record = generate(model, prompt, replace(settings, stop_strings=()), pruner).record
    return cosine_to_first([step[0] for step in record.scores if step])


def similarity_curves(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per step over samples (curves cut to the shortest)."""
    length = min(len(curve) for curve in curves)
    stacked = np.array([curve[:length] for curve in curves])
    return stacked.mean(axis=0), stacked.std(axis=0)
