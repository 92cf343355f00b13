"""A training step's loss and gradient on the CPU backend, with the LM head in NumPy.

The LM-head/KL work is most of a step, and on the CPU backend NumPy does it ~2.5x faster than
MLX (:mod:`tdpo_mlx.cpu_head`). NumPy needs the hidden states' values, but evaluating the
policy's body inside ``nn.value_and_grad`` makes MLX keep every traced intermediate until
backward (measured: 14.9 GB peak instead of 4.8 GB at the benchmark shape). So the step runs
in three phases, without a trace around the body:

1. forward: the policy body through ``mx.vjp`` with a cotangent buffer that is filled in phase 3
   (MLX's graph is lazy: the buffer is read only when the gradient is evaluated; NumPy writes
   into an evaluated MLX array's memory, which MLX documents for ``np.array(a, copy=False)``),
   and the reference body; both hidden states evaluated, as an ordinary forward pass keeps
   only what backward needs;
2. head and loss: per chunk of scored positions, NumPy computes log pi_theta(y_t),
   log pi_ref(y_t), KL(pi_ref || pi_theta) and their maps d/dh through the head
   (:func:`tdpo_mlx.cpu_head.chunk_terms`); the loss of the resulting statistics and its
   gradient w.r.t. the per-position log-probs and KLs come from ``mx.value_and_grad`` on
   those small arrays;
3. backward: dL/dh = g_tok d_tok + g_kl d_kl at each scored position goes into the buffer
   and the body's VJP (the adapters' gradients) is evaluated.

The result equals ``nn.value_and_grad`` over :func:`tdpo_mlx.fast_stats.batch_statistics` to
float32 rounding; Metal and CUDA keep that path (their exponentials are fast).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

from . import cpu_head
from .fast_stats import (
    NUMPY_HEAD,
    has_trainable,
    reference_hidden,
    row_membership,
    sequence_statistics,
    statistics_plan,
)


def value_and_grad(
    model,
    batch,
    loss_of_statistics,
    *,
    reference_model=None,
    average_log_prob: bool = False,
    kl_grad: str = "all",
    share_prompt: bool = True,
    chunk_size: int | None = None,
):
    """``(value, grads)`` of ``loss_of_statistics(stats)`` w.r.t. ``model.trainable_parameters()``,
    where ``stats`` = :func:`tdpo_mlx.fast_stats.batch_statistics` of ``batch`` (same keywords);
    None where this path does not apply (not the CPU backend, a head that is not a plain
    float32 matrix or has trainable parameters, no verified head plan): then use
    ``nn.value_and_grad`` over ``batch_statistics``.

    Args:
        loss_of_statistics: :class:`~tdpo_mlx.stats.SequenceStatistics` -> a scalar loss, or a
            tuple whose first element is the scalar loss (the rest is returned as is).

    Returns:
        ``(value, grads)`` like ``nn.value_and_grad(model, fn)(...)``: the evaluated value, and
        the gradients in the tree of ``model.trainable_parameters()`` (evaluated).
    """
    if not NUMPY_HEAD["on"]:
        return None
    plan = statistics_plan(
        model,
        batch,
        reference_model=reference_model,
        chunk_size=chunk_size,
        kl_grad=kl_grad,
        share_prompt=share_prompt,
        numpy_head=True,
    )
    if plan is None or has_trainable(plan.pol.module):
        return None
    w_pol, w_ref = cpu_head.head_weight(plan.pol), cpu_head.head_weight(plan.ref)
    if w_pol is None or w_ref is None:
        return None

    # phase 1: forward, with the policy's VJP pending on a cotangent buffer
    n, t = plan.mask.shape
    cotangent = mx.array(np.zeros((n, t, w_pol.shape[1]), np.float32))
    mx.eval(cotangent)
    params = tree_flatten(model.trainable_parameters())
    names = [k for k, _ in params]

    def policy_hidden(*arrays):
        model.update(tree_unflatten(list(zip(names, arrays))))
        return plan.run_body(plan.pol.body, plan.inputs).astype(mx.float32)

    (hidden,), grads = mx.vjp(policy_hidden, [v for _, v in params], [cotangent])
    model.update(tree_unflatten(params))
    ref_hidden = reference_hidden(plan, model, reference_model).astype(mx.float32)
    mx.eval(hidden, ref_hidden)

    # phase 2: the head per chunk, then the loss and its gradient per position
    values, maps = head_terms(plan, w_pol, w_ref, hidden, ref_hidden)
    tok, ref_tok, kl = (mx.array(np.concatenate(v)) for v in zip(*values))
    member = mx.array(row_membership(plan.groups, n))

    def loss_of_positions(tok, kl):
        return loss_of_statistics(sequence_statistics(tok, ref_tok, kl, member, plan.mask, average_log_prob))

    value, (g_tok, g_kl) = mx.value_and_grad(loss_of_positions, argnums=(0, 1))(tok, kl)
    mx.eval(value, g_tok, g_kl)

    # phase 3: dL/dh at the scored positions, then the body's backward
    flat = np.asarray(cotangent).reshape(n * t, -1)
    idx = np.concatenate([g[0] for g in plan.groups])
    live = np.concatenate([g[1] for g in plan.groups]) >= 0
    d_tok, d_kl = (np.concatenate(v) for v in zip(*maps))
    dh = np.asarray(g_tok)[:, None] * d_tok + np.asarray(g_kl)[:, None] * d_kl
    flat[idx[live]] = dh[live]
    mx.eval(grads)
    by_name = dict(zip(names, grads))
    return value, tree_map_with_path(lambda name, _: by_name[name], model.trainable_parameters())


def head_terms(plan, w_pol, w_ref, hidden, ref_hidden):
    """Per chunk: ``(tok, ref_tok, kl)`` and ``(d_tok, d_kl)`` NumPy arrays
    (:func:`tdpo_mlx.cpu_head.chunk_terms`), in the order of ``plan.groups``."""
    n, t = plan.mask.shape
    h = np.asarray(hidden).reshape(n * t, -1)
    hr = np.asarray(ref_hidden).reshape(n * t, -1)
    targets = plan.targets.astype(mx.int32)
    mx.eval(targets)
    targets = np.asarray(targets).reshape(-1)
    work = cpu_head.WORKSPACE
    values, maps = [], []
    for idx, _, c, need_kl in plan.groups:
        grad = "all" if need_kl else "tok"
        for i in range(0, len(idx), c):
            j = idx[i : i + c]
            out = cpu_head.chunk_terms(w_pol, w_ref, h[j], hr[j], targets[j], plan.pol.scale, plan.pol.cap, grad, work)
            values.append(out[:3])
            maps.append(out[3:])
    return values, maps
