"""Figures 3 and 4 of the paper: the functions behind the notebooks, and the notebooks themselves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from helpers import page  # noqa: E402

from redvtp_eval.engine.families import llada_v_settings  # noqa: E402
from redvtp_eval.engine.sampler import GenerationSettings, generate  # noqa: E402
from redvtp_eval.pruners import make_pruner  # noqa: E402
from redvtp_eval.report.paper_figures import (  # noqa: E402
    cosine_to_first,
    draw_kept_tokens,
    kept_tokens,
    score_similarity,
    similarity_curves,
    token_regions,
)

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SETTINGS, _ = llada_v_settings({"gen_length": 8, "steps": 4, "block_length": 8})


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_kept_tokens_are_redvtps_and_the_drawing_greys_the_rest(tiny, ratio):
    image = page()
    kept = kept_tokens(tiny, "What is written?", image, SETTINGS, ratio)
    regions = token_regions(tiny, image)
    assert len(kept) == max(1, int(len(regions) * ratio)) and kept == sorted(kept)
    figure, axes = plt.subplots(1, 2)
    greyed = draw_kept_tokens(axes, tiny, image, kept)
    plt.close(figure)
    newlines = {index for index, box in enumerate(regions) if box is None}
    assert greyed == len(set(range(len(regions))) - set(kept) - newlines)


def test_score_similarity_is_the_cosine_of_each_steps_scores_with_the_first(tiny):
    image = page()
    similarity = score_similarity(tiny, "What is written?", image, SETTINGS)
    pruner = make_pruner("redvtp", ratio=1.0, record_scores=True)
    no_stop = GenerationSettings(gen_length=8, steps=4, block_length=8, stop_strings=())
    scores = [
        step[0]
        for step in generate(tiny, tiny.prepare("What is written?", [image]), no_stop, pruner).record.scores
        if step
    ]
    assert len(similarity) == len(scores) == 3  # the last step leaves no masked query
    first = scores[0].double()
    naive = [float((s.double() @ first) / (s.double().norm() * first.norm())) for s in scores]
    assert similarity == pytest.approx(naive) and similarity[0] == pytest.approx(1.0)
    assert cosine_to_first([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]) == pytest.approx([1.0, 0.0])


def test_similarity_curves_average_over_samples_up_to_the_shortest():
    mean, std = similarity_curves([[1.0, 0.8, 0.6], [1.0, 0.6]])
    assert mean.tolist() == pytest.approx([1.0, 0.7]) and std.tolist() == pytest.approx([0.0, 0.1])


@pytest.mark.parametrize("name", ["fig3_kept_tokens", "fig4_score_stability"])
def test_notebook_executes_on_the_toy_model(name):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert not any(output.output_type == "error" for output in outputs)
