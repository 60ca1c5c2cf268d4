"""Models: the networks and everything a forward needs, from a checkpoint folder to logits.

LLaDA-V and LaViDa (``llada_v.py``, ``lavida.py``) behind the :class:`~redvtp_eval.models.base.DiffusionVLM`
interface; checkpoint finding and strict loading (``checkpoint.py``); the AnyRes image pipeline
(``anyres.py``); chat templates and prompts (``prompt.py``); the attention probe (``attention.py``) and
the prefix-KV cache (``prefix_cache.py``); device-aware timing (``timing.py``); tiny random checkpoints
(``make_tiny.py``, ``python -m redvtp_eval.models.make_tiny DIR``).

May import: torch, transformers and other libraries, and ``redvtp_eval.models`` itself.
Must not know: the sampler, pruners, the harness, lmms-eval or any config system. A model is asked for
embeddings, logits and a prefill; what to generate and which tokens to drop is decided above it.
"""
