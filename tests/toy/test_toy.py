"""The toy task, its training script, and the shipped toy model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from redvtp_eval.harness.offline_tasks import TASKS, held_out, task_prompt
from redvtp_eval.harness.toy_task import COLORS, PAGES, QUESTIONS, sample_at

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "checkpoints" / "toy-llada-v"
SLICE = 16
SELECTION = 8
"""Held-out samples of the selection test (engine run directly, both forms)."""


def test_samples_are_a_pure_function_of_seed_and_index():
    first, again, other = sample_at(5, 3), sample_at(5, 3), sample_at(5, 4)
    assert first.image.tobytes() == again.image.tobytes() and first.answer == again.answer
    assert first.image.tobytes() != other.image.tobytes()
    stripes = first.answer.split(", ")
    assert len(stripes) == 3 == len(set(stripes)) and first.options == list(COLORS)
    assert first.options[first.correct_option] == stripes[1]
    left, top, right, bottom = first.answer_box
    assert (right - left, bottom - top) == (16, 16)
    assert first.image.getpixel((left, top)) == COLORS[stripes[0]]
    assert first.image.getpixel((right - 1, bottom - 1)) == COLORS[stripes[2]]
    assert {sample_at(0, i).image.size for i in range(200)} == set(PAGES)


def test_every_question_of_a_wording_has_the_same_token_length(tiny):
    """Training batches share one page size and wording and stack prompts without padding."""
    for wording in range(len(QUESTIONS)):
        samples = [sample_at(0, index, wording=wording) for index in range(12)]
        docs = {
            "redvtp_toy_docvqa": [{"question": s.question} for s in samples],
            "redvtp_toy_mcq": [{"question": s.choice_question, "options": s.options} for s in samples],
        }
        for name, form in docs.items():
            assert len({len(tiny.prompt_ids(task_prompt(name, doc), 1, "no_think")) for doc in form}) == 1


def test_training_prompts_are_what_lmms_eval_sends():
    from lmms_eval.tasks import TaskManager, get_task_dict

    from redvtp_eval.harness.offline_tasks import TASKS_DIR, ensure_offline_tasks

    ensure_offline_tasks()
    tasks = get_task_dict(list(TASKS), TaskManager(include_path=str(TASKS_DIR), include_defaults=False))
    for name, task in tasks.items():
        doc = task.eval_docs[0]
        assert task.doc_to_text(doc) == task_prompt(name, doc)
        assert "answer_box" in doc


@pytest.mark.slow(reason="real optimiser steps of the toy model on generated pages are what the test checks")
def test_training_a_few_steps_lowers_the_loss(tmp_path):
    from redvtp_eval.toy.train import train

    report = train(tmp_path / "micro", "micro", steps=40, batch_size=8, lr=3e-3, seed=0, eval_size=1, ramp=0.5)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "micro" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert statistics.median(losses[-10:]) < statistics.median(losses[:4]) / 2
    assert set(report["held_out"]) == set(TASKS)
    assert (tmp_path / "micro" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def toy():
    from redvtp_eval.models.llada_v import load_llada_v

    return load_llada_v(TOY, dtype="float32")


def test_the_answer_region_is_the_tags_tile_token_and_its_base_view_tokens(toy):
    """The mask the harness hands the oracles: one tile token (the tag is one patch) plus the base-view tokens
    its squashed copy overlaps; the adapter builds the same mask from a document's ``answer_box``."""
    from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM
    from redvtp_eval.models import anyres
    from redvtp_eval.pruners import make_pruner

    for index in range(8):
        sample = held_out("redvtp_toy_docvqa", index)
        region = toy.answer_region(sample.image, sample.answer_box)
        unit = toy.config.vision.image_size // toy.config.vision.patch_size
        assert len(region) == toy.prepare(sample.question, [sample.image], "no_think").visual_tokens
        assert int(region[unit * unit :].sum()) == 1 and 1 <= int(region[: unit * unit].sum()) <= 4
        (tile,) = region[unit * unit :].nonzero().squeeze(1).tolist()
        vision = toy.config.vision
        boxes = anyres.token_boxes(
            sample.image.size, toy.config.image_grid_pinpoints, vision.image_size, vision.patch_size, toy.max_crops
        )
        assert boxes[unit * unit + tile] == pytest.approx(sample.answer_box)
        adapter = SimpleNamespace(pruner=make_pruner("oracle"), model=toy)
        doc = {"answer_box": list(sample.answer_box)}
        assert PrunedDiffusionVLM._region(adapter, doc, [sample.image])[0].equal(region)
    with pytest.raises(ValueError, match="answer_box"):
        PrunedDiffusionVLM._region(adapter, {"question": "?"}, [sample.image])


@pytest.mark.slow(reason="the card's scores are over the first held-out samples of both toy tasks")
def test_the_shipped_toy_model_reaches_its_recorded_scores(toy):
    from redvtp_eval.toy.train import held_out_scores

    recorded = json.loads((TOY / "card.json").read_text())["held_out_slice"]
    assert recorded["size"] == SLICE
    scores = held_out_scores(toy, SLICE)
    for name in TASKS:
        assert scores[name] == pytest.approx(recorded["scores"][name], abs=1.5 / SLICE)


@pytest.mark.slow(reason="16 generations of the toy model per form")
@pytest.mark.parametrize("task", list(TASKS))
def test_which_tokens_are_kept_decides_the_answer(toy, task):
    """Keeping the tag's tokens first answers from a tenth of the page; dropping them first (a tenth dropped)
    leaves the model guessing: a 60-way triple (free answer) or a 5-way letter."""
    from redvtp_eval.pruners import make_pruner
    from redvtp_eval.toy.analysis import run

    def right(name: str, ratio: float) -> int:
        count = 0
        for index in range(SELECTION):
            sample = held_out(task, index)
            target = sample.answer if task == "redvtp_toy_docvqa" else chr(ord("A") + sample.correct_option)
            count += run(toy, sample, make_pruner(name, ratio=ratio), seed=index, task=task).text == target
        return count

    assert right("oracle", 0.1) >= SELECTION - 1
    assert right("anti_oracle", 0.9) <= (1 if task == "redvtp_toy_docvqa" else 4)
