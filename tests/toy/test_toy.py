"""The toy task, its training script, and the shipped toy model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from redvtp_eval.harness.offline_tasks import TASKS, held_out, task_prompt
from redvtp_eval.harness.toy_task import COLORS, sample_at

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "checkpoints" / "toy-llada-v"
SLICE = 16


def test_samples_are_a_pure_function_of_seed_and_index():
    first, again, other = sample_at(5, 3), sample_at(5, 3), sample_at(5, 4)
    assert first.image.tobytes() == again.image.tobytes() and first.answer == again.answer
    assert first.image.tobytes() != other.image.tobytes()
    assert first.options == list(COLORS) and first.options[first.correct_option] == first.answer == first.color
    left, top, right, bottom = first.answer_box
    assert (right - left, bottom - top) == (32, 32)
    assert first.image.getpixel((left + 1, top + 1)) == COLORS[first.color]


def test_every_question_of_a_form_has_the_same_token_length(tiny):
    """Training batches stack prompts without padding, so each form must tokenize to one length."""
    samples = [held_out("redvtp_toy_docvqa", index) for index in range(24)]
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


@pytest.mark.slow(reason="real optimiser steps of the toy model on generated pages are what the test checks")
def test_training_a_few_steps_lowers_the_loss(tmp_path):
    from redvtp_eval.toy.train import train

    report = train(tmp_path / "micro", "micro", steps=40, batch_size=8, lr=3e-3, seed=0, eval_size=1)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "micro" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert statistics.median(losses[-10:]) < statistics.median(losses[:4]) / 2
    assert set(report["held_out"]) == set(TASKS)
    assert (tmp_path / "micro" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def toy():
    from redvtp_eval.models.llada_v import load_llada_v

    return load_llada_v(TOY, dtype="float32")


@pytest.mark.slow(reason="the card's scores are over all 64 held-out samples of both toy tasks")
def test_the_shipped_toy_model_reaches_its_recorded_scores(toy):
    from redvtp_eval.toy.train import held_out_scores

    recorded = json.loads((TOY / "card.json").read_text())["held_out_slice"]
    assert recorded["size"] == SLICE
    scores = held_out_scores(toy, SLICE)
    for name in TASKS:
        assert scores[name] == pytest.approx(recorded["scores"][name], abs=1.5 / SLICE)


def test_redvtp_keeps_more_of_the_answer_region_than_random(toy):
    from redvtp_eval.pruners import make_pruner
    from redvtp_eval.toy.analysis import TASK, answer_region_kept

    def mean_kept(name: str) -> float:
        values = [
            answer_region_kept(toy, held_out(TASK, i), make_pruner(name, ratio=0.25), seed=i) for i in range(SLICE)
        ]
        return sum(values) / len(values)

    assert mean_kept("redvtp") > mean_kept("random")
