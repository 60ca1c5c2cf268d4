"""Every sample's own score, and whether the task's rule could read its answer, from lmms-eval's per-sample records.

Where it sits: the job calls :func:`sample_outcome` on each per-sample record lmms-eval returns (pruned and
replayed unpruned) and writes the result into ``samples.jsonl``; the paired statistics and the
``unparseable`` counts of ``metrics.json`` are made of it.

Most metrics store a number per sample. Two of the six benchmarks store what their aggregation needs
instead, so a task config names its ``sample_scorer``:

- ``metric`` (default): the number under the task's metric; the answer counts as unparseable when a
  regex filter found nothing (lmms-eval's ``[invalid]`` fallback) or the paper's ``Answer:`` parser found
  no tag (``unparsed`` = 1, a metric of the ``tasks/paper`` YAMLs).
- ``mme``: each row holds ``{question_id, category, score}`` under ``mme_perception_score`` *or*
  ``mme_cognition_score`` (by category); the row's score is that ``score`` (1 when its yes/no answer is
  right), and lmms-eval's ``parse_pred_ans`` reading ``other`` is unparseable.
- ``mmbench``: each row holds its question, options, answer and prediction; the task scores by circular
  groups (every rotation of a question must be right) and asks a judge where no rule matches. The row's
  score here is the rule-based one of lmms-eval's judge-free route (``mmbench_en_dev_static``:
  ``MMBench_Evaluator.can_infer``, then ``extract_mcq_answer``): 1 when the option read equals the answer;
  no option read is unparseable (and scores 0).
"""

from __future__ import annotations

SCORERS = ("metric", "mme", "mmbench")
INVALID = "[invalid]"
"""What lmms-eval's regex filters return when they find nothing."""


def sample_outcome(sample: dict, metric: str, scorer: str = "metric") -> tuple[float | None, bool]:
    """(score, unparseable) of one lmms-eval per-sample record under the task's metric key (``name,filter``)."""
    if scorer not in SCORERS:
        raise ValueError(f"sample_scorer {scorer!r} is not one of {', '.join(SCORERS)}")
    if scorer == "mme":
        return _mme(sample)
    if scorer == "mmbench":
        return _mmbench(sample[metric.split(",")[0]])
    value = sample.get(metric.split(",")[0])
    score = float(value) if isinstance(value, (int, float)) else None
    return score, INVALID in _strings(sample.get("filtered_resps")) or bool(sample.get("unparsed"))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [text for item in value or [] for text in _strings(item)]


def _mme(sample: dict) -> tuple[float | None, bool]:
    from lmms_eval.tasks.mme.utils import parse_pred_ans

    record = sample.get("mme_perception_score") or sample.get("mme_cognition_score")
    answers = _strings(sample.get("filtered_resps"))
    unparseable = bool(answers) and parse_pred_ans(answers[0]) == "other"
    return (float(record["score"]) if record else None), unparseable


def _mmbench(row: dict) -> tuple[float, bool]:
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    rules = MMBench_Evaluator()
    choices = rules.build_choices(row)
    option = rules.can_infer(str(row["prediction"]), dict(choices)) or extract_mcq_answer(
        str(row["prediction"]), choices=sorted(choices)
    )
    return float(option == row["answer"]), not option
