"""Scorers of the paper protocol that lmms-eval 0.7.3 lacks (the ``Answer:`` tag of the reasoning prompt).

Where it sits: the ``paper_*`` task YAMLs next to this file include lmms-eval's own task YAMLs (through
``tasks/_lmms_eval``, a link to the installed ``lmms_eval/tasks``) and point ``process_results`` here.
Behaviour follows the RedVTP-LLaDA-V fork's ``docvqa/utils.py`` and ``infovqa/utils.py``
(``parse_VWImodel_response`` + ``anls``), re-implemented: the answer is the text after the last colon
of the last ``Answer:``, with ``*`` removed and ``.``, ``,`` and spaces stripped from both ends; an
answer without the tag scores as the string ``"None"``.
"""

from __future__ import annotations

from lmms_eval.api.metrics import anls

ANSWER_TAG = "Answer:"
UNPARSED = "None"
"""What an answer without the tag is scored as (the fork's choice)."""


def answer_after_tag(response: str | None) -> str | None:
    """The final answer of a 'reason, then Answer: X' response; None when there is no ``Answer:``."""
    if not response:
        return None
    text = response.replace("*", "")
    start = text.rfind(ANSWER_TAG)
    if start < 0:
        return None
    return text[start:].strip().rsplit(":", 1)[-1].strip().strip("., ")


def anls_after_tag(doc: dict, results: list[str]) -> dict:
    """ANLS of the tagged answer against the document's answers (lmms-eval's own ANLS formula), and whether the
    answer had no tag (``unparsed``: 1 or 0; its mean is the share of untagged answers)."""
    answer = answer_after_tag(results[0].strip())
    gold = doc["answers"] if isinstance(doc["answers"], list) else [doc["answers"]]
    scores = anls(references=gold, predictions=[answer if answer is not None else UNPARSED])
    return scores | {"unparsed": int(answer is None)}
