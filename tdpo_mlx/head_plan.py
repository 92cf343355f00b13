"""How to get an mlx-lm causal LM's logits from its final hidden states: the body, the LM head
(untied ``lm_head`` or tied embeddings) and the final logit transform (softcap, logit scale),
found structurally and checked once numerically. Used by :mod:`tdpo_mlx.fast_stats`."""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

from .models import eval_mode


class HeadPlan(NamedTuple):
    """How to get logits from a model's final hidden states."""

    body: object  # callable inputs (N, L) -> hidden (N, L, D)
    head: object  # callable hidden (..., D) -> raw logits (..., V)
    module: object  # the nn.Module owning the head weights (for trainable_parameters)
    scale: float  # logits = cap * tanh(scale * z / cap), or scale * z when cap is None
    cap: float | None
    vocab: int


def find_head_plan(model) -> HeadPlan | None:
    """Body, LM head and final logit transform of an mlx-lm causal LM, or None if unknown.

    Handles untied ``lm_head``, tied embeddings (``model.model.embed_tokens.as_linear``),
    final logit softcapping (``final_logit_softcapping``: Gemma 2/3n/4), Cohere's ``logit_scale``
    and Granite's ``logits_scaling``. :func:`verified_plan` checks the result numerically.
    """
    children = model.children() if hasattr(model, "children") else {}
    body = children.get("model")
    if body is None or not callable(body):
        return None
    tied = getattr(model, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(model, "args", None), "tie_word_embeddings", None)
    if "lm_head" in children and tied is not True:
        module = children["lm_head"]
        head = module
    else:
        module = body.children().get("embed_tokens") if hasattr(body, "children") else None
        if module is None or not hasattr(module, "as_linear"):
            return None
        head = module.as_linear
    scale = 1.0
    margs = getattr(body, "args", None)
    if (
        margs is not None
        and getattr(margs, "logit_scale", None)
        and getattr(model, "model_type", "").startswith("cohere")
    ):
        scale = float(margs.logit_scale)
    if getattr(model, "logits_scaling", None):
        scale = 1.0 / float(model.logits_scaling)
    cap = getattr(model, "final_logit_softcapping", None)
    weight = getattr(module, "weight", None)
    vocab = None
    if weight is not None:
        vocab = int(weight.shape[0])
    if vocab is None:
        args = getattr(model, "args", None)
        vocab = int(getattr(args, "vocab_size", 0)) or None
    if vocab is None:
        return None
    return HeadPlan(body, head, module, scale, float(cap) if cap else None, vocab)


_PLAN_ATTR = "_tdpo_fast_plan_ok"


def verified_plan(model) -> HeadPlan | None:
    """:func:`find_head_plan` checked once per model: ``model(x)`` must equal head(body(x)).

    The check runs a 6-token forward; its verdict is stored on the model object. Inside
    ``mx.compile`` the check cannot evaluate and is skipped (the structural plan is used).
    """
    plan = find_head_plan(model)
    if plan is None:
        return None
    verdict = getattr(model, _PLAN_ATTR, None)
    if verdict is None:
        try:
            x = (mx.arange(1, 7, dtype=mx.int32) % plan.vocab)[None]
            with eval_mode(model):  # dropout would make two passes differ
                full = model(x).astype(mx.float32)
                mine = post_logits(plan.head(plan.body(x)).astype(mx.float32), plan.scale, plan.cap)
                diff = mx.max(mx.abs(full - mine)).item()
            verdict = bool(full.shape == mine.shape and diff <= 1e-3 * max(1.0, mx.max(mx.abs(full)).item()))
        except (RuntimeError, ValueError) as e:
            if "eval" not in str(e) and "transform" not in str(e):
                raise
            return plan  # under mx.compile nothing can be evaluated: trust the plan, check next time
        object.__setattr__(model, _PLAN_ATTR, verdict)
    return plan if verdict else None


def post_logits(z: mx.array, scale: float, cap: float | None) -> mx.array:
    """The model's final logit transform: ``cap * tanh(scale * z / cap)`` or ``scale * z``."""
    if cap:
        return cap * mx.tanh(z * (scale / cap))
    return z * scale if scale != 1.0 else z
