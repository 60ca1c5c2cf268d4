"""RedVTP: keep the visual tokens that the still-masked response positions attend to.

Where it sits: a :class:`~redvtp_eval.pruners.base.Pruner` that the sampler calls after step 1.

From the attention of the first denoising step over the full sequence, averaged over heads and
layers (Ā), each visual token j gets the score S_1[j] = mean over queries i ∈ Q of Ā[i, j], where Q is
the set of response positions still masked after step 1's unmasking (paper and official code). The
top ``max(1, int(N·r))`` tokens of each image's N are kept, in their original order; the rest are
deleted from the sequence for every later step and block. With no query left (everything was decoded
at step 1) nothing is pruned, as in the official code.

The ``query_set`` option swaps Q. The official ablation variants (left commented in the RedVTP-LLaDA-V
code next to the default; the paper's table of them is not public, so the names say what each is):

* ``masked`` — the default above;
* ``text_after_image+masked`` — the prompt text from the end of the (last) visual span to the end of the
  prompt (the question and the chat markup after it: the code's ``text_start..prompt_len``), plus Q;
* ``text_after_image`` — that text alone;
* ``text_after_image+all_response`` — that text plus every response position (``text_start..prompt_len+gen``);
* ``decoded`` — the response positions step 1 committed (the code's "confirmed" variant).

And the project's own, over *every* prompt text position (system prompt, BOS and chat markup before the
image too): ``prompt_text+masked``, ``prompt_text``; and ``all_response`` (every response position, no
prompt row).
"""

from __future__ import annotations

import torch
from torch import Tensor

from redvtp_eval.pruners.base import PruneContext, Pruner, check_ratio, kept_count

QUERY_SETS = (
    "masked",
    "text_after_image+masked",
    "text_after_image",
    "text_after_image+all_response",
    "decoded",
    "prompt_text+masked",
    "prompt_text",
    "all_response",
)


class RedVTP(Pruner):
    name = "redvtp"
    needs_attention = True

    def __init__(self, ratio: float = 0.5, query_set: str = "masked", **options) -> None:
        super().__init__(**options)
        if query_set not in QUERY_SETS:
            raise ValueError(f"query_set {query_set!r} is not one of {', '.join(QUERY_SETS)}")
        self.ratio = check_ratio(ratio)
        self.query_set = query_set

    def queries(self, context: PruneContext) -> Tensor:
        after_image = context.prompt_text[context.prompt_text >= context.visual_spans[-1][1]]
        return {
            "masked": context.masked,
            "text_after_image+masked": torch.cat([after_image, context.masked]),
            "text_after_image": after_image,
            "text_after_image+all_response": torch.cat([after_image, context.response]),
            "decoded": context.decoded,
            "prompt_text+masked": torch.cat([context.prompt_text, context.masked]),
            "prompt_text": context.prompt_text,
            "all_response": context.response,
        }[self.query_set]

    def scores(self, context: PruneContext) -> list[Tensor] | None:
        if context.attention is None or not context.visual_spans:
            return None
        queries = self.queries(context)
        if len(queries) == 0:
            return None
        return context.split_by_image(context.attention(queries).mean(dim=0))

    def select(self, context: PruneContext) -> list[Tensor] | None:
        scores = self.scores(context)
        if scores is None:
            return None
        return [torch.topk(s, kept_count(len(s), self.ratio)).indices.sort().values for s in scores]
