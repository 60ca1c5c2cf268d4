"""Model families by name: how to load each, where its official weights live, and how to read its gen_kwargs.

Where it sits: the harness (``configs/model/*.yaml``'s ``family``), the lmms-eval adapter (its ``family``
argument) and the tiny-checkpoint generator look a family up here; nothing else branches on the family.
Adding one: a loader returning a :class:`~redvtp_eval.models.base.DiffusionVLM`, a settings parser, a
tiny config in ``models/make_tiny.py``, and one line in :data:`FAMILIES`.

Each parser takes the task's generation kwargs under the official evaluation's names for that family and
returns the sampler's settings (plus the think mode, LLaDA-V's only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redvtp_eval.engine.sampler import GenerationSettings
from redvtp_eval.models import lavida
from redvtp_eval.models.base import DiffusionVLM
from redvtp_eval.models.llada_v import HUB_ID as LLADA_V_HUB_ID
from redvtp_eval.models.llada_v import load_llada_v

END_OF_TURN = "<|eot_id|>"


def _flag(value) -> bool:
    """A boolean gen_kwarg as lmms-eval may pass it: a bool, or the strings 'True'/'False'."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"expected True or False, got {value!r}")
        return value.lower() == "true"
    return bool(value)


def llada_v_settings(gen_kwargs: dict) -> tuple[GenerationSettings, str | None]:
    """LLaDA-V's names (``gen_length``, ``steps`` or ``gen_steps``, ``block_length``, ``remasking``,
    ``temperature``, ``think_mode``, ``stopping_criteria``); absent, the official wrapper's 2/2/2.
    ``<|eot_id|>`` always ends an answer. Beyond the official wrapper: ``fast_dllm`` (``prefix``/``dual``),
    ``refresh_every`` and ``confidence_threshold`` (Fast-dLLM's rule; not the ``threshold`` of LLaDA-V's own
    Fast-dLLM hook, which is another rule)."""
    stops = gen_kwargs.get("stopping_criteria", [])
    stops = [stops] if isinstance(stops, str) else list(stops)
    settings = GenerationSettings(
        gen_length=int(gen_kwargs.get("gen_length", 2)),
        steps=int(gen_kwargs.get("steps", gen_kwargs.get("gen_steps", 2))),
        block_length=int(gen_kwargs.get("block_length", 2)),
        temperature=float(gen_kwargs.get("temperature", 0.0)),
        remasking=gen_kwargs.get("remasking", "low_confidence"),
        stop_strings=tuple(dict.fromkeys([*stops, END_OF_TURN])),
        fast_dllm=gen_kwargs.get("fast_dllm", "none"),
        refresh_every=_optional(gen_kwargs.get("refresh_every"), int),
        threshold=_optional(gen_kwargs.get("confidence_threshold"), float),
    )
    return settings, gen_kwargs.get("think_mode")


def _optional(value, kind):
    """A gen_kwarg that may be absent or null (``None``/``null`` as lmms-eval passes it on)."""
    return None if value is None or value in ("None", "null") else kind(value)


LAVIDA_REMASKING = {"entrophy": "entropy"}
"""LaViDa-LLaDA's spelling of a remasking rule → ours."""
DREAM_ALGS = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}
"""Dream's ``alg`` → our remasking rule (``origin``, Dream's random-transfer rule, is not implemented)."""


def _lavida_common(gen_kwargs: dict) -> dict:
    if gen_kwargs.get("think_mode") is not None:
        raise ValueError("LaViDa has no think mode; drop think_mode from the task's generation settings")
    return {
        "temperature": float(gen_kwargs.get("temperature", 0.0)),
        "stop_strings": (),
        "shift": float(gen_kwargs.get("schedule__shift", gen_kwargs.get("shift", 3.0))),
        "prefix_cache": _flag(gen_kwargs.get("prefix_lm", False)),
    }


def lavida_llada_settings(gen_kwargs: dict) -> tuple[GenerationSettings, None]:
    """LaViDa-LLaDA's names, with its wrapper's defaults: ``max_new_tokens`` (256), ``block_length``
    (min(128, max_new_tokens)), then steps per block = max_new_tokens / blocks, replaced by
    min(``step_per_block``, block_length) (default: block_length) or scaled by ``step_ratio`` (int(steps·r));
    ``schedule`` (absent: uniform) with ``schedule__shift``, ``remasking``, ``prefix_lm``."""
    if "step_per_block" in gen_kwargs and "step_ratio" in gen_kwargs:
        raise ValueError("pass step_per_block or step_ratio, not both (as LaViDa's generate)")
    gen_length = int(gen_kwargs.get("max_new_tokens", 256))
    block_length = int(gen_kwargs.get("block_length", min(128, gen_length)))
    if gen_length % block_length:
        raise ValueError(f"max_new_tokens {gen_length} is not a multiple of block_length {block_length}")
    blocks = gen_length // block_length
    per_block = gen_length // blocks
    if "step_ratio" in gen_kwargs:
        per_block = int(per_block * float(gen_kwargs["step_ratio"]))
    else:
        per_block = min(int(gen_kwargs.get("step_per_block", block_length)), block_length)
    remasking = gen_kwargs.get("remasking", "low_confidence")
    settings = GenerationSettings(
        gen_length=gen_length,
        steps=per_block * blocks,
        block_length=block_length,
        remasking=LAVIDA_REMASKING.get(remasking, remasking),
        schedule=gen_kwargs.get("schedule") or "uniform",
        **_lavida_common(gen_kwargs),
    )
    return settings, None


def lavida_dream_settings(gen_kwargs: dict) -> tuple[GenerationSettings, None]:
    """LaViDa-Dream's names: ``max_new_tokens`` (256), ``steps`` (capped at max_new_tokens, default equal) or
    ``step_ratio`` (int(max_new_tokens·r)), ``alg`` (default ``topk_margin``, what every LaViDa-Dream
    evaluation passes), ``schedule`` (absent: Dream's timestep rule), ``prefix_lm``. One block: Dream ignores
    ``block_length`` and ``step_per_block``."""
    gen_length = int(gen_kwargs.get("max_new_tokens", 256))
    steps = min(int(gen_kwargs.get("steps", gen_length)), gen_length)
    if "step_ratio" in gen_kwargs:
        steps = int(gen_length * float(gen_kwargs["step_ratio"]))
    alg = gen_kwargs.get("alg", "topk_margin")
    if alg not in DREAM_ALGS:
        raise ValueError(f"alg {alg!r} is not one of {', '.join(DREAM_ALGS)}")
    settings = GenerationSettings(
        gen_length=gen_length,
        steps=steps,
        block_length=gen_length,
        remasking=DREAM_ALGS[alg],
        schedule=gen_kwargs.get("schedule") or "dream",
        **_lavida_common(gen_kwargs),
    )
    return settings, None


@dataclass(frozen=True)
class Family:
    load: Callable[..., DiffusionVLM]
    """(path, dtype=, device=, attn_implementation=) → the model."""
    hub_id: str
    settings: Callable[[dict], tuple[GenerationSettings, str | None]]
    dtype: str
    """The official evaluation's precision: LLaDA-V's builder loads float16 (tower and pixels too), LaViDa's
    wrapper casts to bfloat16."""


FAMILIES: dict[str, Family] = {
    "llada_v": Family(load_llada_v, LLADA_V_HUB_ID, llada_v_settings, "float16"),
    "lavida_llada": Family(lavida.load_lavida_llada, lavida.LLADA_HUB_ID, lavida_llada_settings, "bfloat16"),
    "lavida_dream": Family(lavida.load_lavida_dream, lavida.DREAM_HUB_ID, lavida_dream_settings, "bfloat16"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
