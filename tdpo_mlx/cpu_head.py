"""The LM-head/KL chunk of :mod:`tdpo_mlx.fast_stats` on the CPU backend, in NumPy.

On the CPU backend MLX's elementwise kernels run on one core without SIMD: ``mx.exp`` measured
14.4 ns an element and ``mx.tanh`` 21.8 ns on our 2-core x86 machines, against 0.52 ns and
0.38 ns for NumPy's SIMD kernels. The chunk needs one exponential per logit (2 x 262,144 per
position for Gemma 3), so MLX spent ~8 s of a 40 s benchmark step on them. The head products
also run faster through NumPy's BLAS (OpenBLAS) at these shapes: (256 x 640) @ (640 x 262,144)
measured 156 GFLOP/s against MLX's 100 (MLX's square products are as fast). ``mx.eval`` and
``np.asarray`` share memory, so an MLX array is read without a copy.

The formulas are :func:`tdpo_mlx.fast_stats._chunk_terms`'s (TDPO Eq. 8 per position, in the
grouped form that keeps float32 KLs near zero exact); the sums over the vocabulary are NumPy's
pairwise sums along a contiguous axis (error ~1e-7 relative at V = 262,144, like
:func:`tdpo_mlx.stats.vocab_sum`). Everything here is forward-only NumPy: the caller wraps it in
an ``mx.custom_function`` whose VJP only combines the maps returned here.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .backend import is_cpu_backend


def head_weight(plan) -> np.ndarray | None:
    """The (V, D) float32 matrix W with ``plan.head(h) == h @ W.T``, as a NumPy view, or None.

    Only on the CPU backend, and only for a plain float32 ``nn.Linear`` without bias or a tied
    float32 ``nn.Embedding`` (``as_linear``); quantized, low-precision or adapted heads return
    None (the MLX kernel serves them).
    """
    module = plan.module
    if not is_cpu_backend():
        return None
    if type(module) is nn.Linear and "bias" not in module and plan.head is module:
        weight = module.weight
    elif type(module) is nn.Embedding and plan.head == module.as_linear:
        weight = module.weight
    else:
        return None
    if weight.dtype != mx.float32 or weight.ndim != 2:
        return None
    mx.eval(weight)
    return np.asarray(weight)


#: Target size of one (C, V) float32 block: (128 x 640) @ (640 x 262,144) products and the
#: chunk's elementwise passes measured 9.5 ms a position at C = 128 against 13.1 at 64 and
#: 11.6 at 256 (Gemma 3's head, forward and both maps).
CHUNK_BYTES = 128 * 2**20


def default_chunk_size(vocab: int) -> int:
    """Positions per chunk for a vocabulary of ``vocab``: a power of two in [8, 1024] with one
    (C, V) float32 block near :data:`CHUNK_BYTES`."""
    c = max(8, min(1024, CHUNK_BYTES // (4 * max(int(vocab), 1))))
    return 1 << (c.bit_length() - 1)


class Workspace:
    """Reused float32 buffers, kept between steps: NumPy returns large blocks to the OS on
    free, and the page faults of a fresh (C, V) block showed up as ~11% of a demo run's
    samples (in the first NumPy op that writes it). A request smaller than a buffer gets a view
    of its start, so the short last chunk of a group does not reallocate either."""

    def __init__(self):
        self._buffers: dict = {}

    def get(self, name: str, shape: tuple) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, np.float32)
        return buf[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held (MLX's peak memory does not count them; benchmarks add them)."""
        return sum(b.nbytes for b in self._buffers.values())


#: The process's workspace (the CPU step and evaluation run one at a time).
WORKSPACE = Workspace()


def chunk_terms(w_pol, w_ref, hp, hr, tgt, scale: float, cap: float | None, grad: str, work: Workspace):
    """Per-position statistics of one chunk and, for training, the gradient maps through the head.

    Args:
        w_pol, w_ref: (V, D) float32 head matrices of policy and reference.
        hp, hr: (C, D) float32 final hidden states of policy and reference at the positions.
        tgt: (C,) int targets.
        scale, cap: the final logit transform y = cap * tanh(scale * z / cap), or scale * z.
        grad: ``"none"`` (values only), ``"tok"`` (the log-prob map only: rows whose KL gets
            no gradient) or ``"all"``.
        work: buffers reused across chunks.

    Returns:
        ``(tok, ref_tok, kl)`` each (C,) float32: log pi_theta(t), log pi_ref(t) and
        KL(pi_ref || pi_theta) at each position (nats); with ``grad`` not ``"none"`` also
        ``d_tok`` and ``d_kl``, (C, D) float32: d tok / d hp = c'(z_t) W[t] - (c' p_theta) @ W
        and d kl / d hp = (c' p_theta) @ W - (c' p_ref) @ W (zeros for ``"tok"``), with
        W = ``w_pol`` and c' the logit transform's derivative at the policy's logits.
    """
    c, v = tgt.shape[0], w_pol.shape[0]
    y = work.get("y", (2 * c, v))
    np.matmul(hp, w_pol.T, out=y[:c])  # two products even for one head: a separate reference
    np.matmul(hr, w_ref.T, out=y[c:])  # with the same weights then gives the same bits
    tok, ref_tok, kl, dc = logit_statistics(y, tgt, scale, cap, grad != "none", work)
    out = (tok, ref_tok, kl)
    if grad == "none":
        return out
    if dc is not None:
        y[:c] *= dc
        y[c:] *= dc
        dc_t = dc[np.arange(c), tgt]
    else:
        if scale != 1.0:
            y *= scale
        dc_t = np.full(c, scale, np.float32)
    a = y[: 2 * c if grad == "all" else c] @ w_pol  # both maps through the policy's head
    d_tok = dc_t[:, None] * w_pol[tgt] - a[:c]
    d_kl = a[:c] - a[c:] if grad == "all" else np.zeros_like(d_tok)
    return out + (d_tok, d_kl)


def logit_statistics(y, tgt, scale: float, cap: float | None, want_grad: bool, work: Workspace):
    """Per-position statistics from raw head outputs, overwriting them with the softmax.

    Args:
        y: (2C, V) float32 raw head outputs z, policy rows then reference rows; on return it
            holds p = softmax(c(z)) of each row (c the final logit transform).
        tgt: (C,) int targets.
        want_grad: also return c'(z_p) (softcapped heads only; None otherwise).

    Returns:
        ``(tok, ref_tok, kl, dc)``: (C,) float32 log pi_theta(t), log pi_ref(t) and
        kl = sum_v p_r (y_r - y_p) + (m_p - m_r) + log(s_p / s_r) (TDPO Eq. 8, one position;
        m = max, s = sum of exp(y - m): the logit differences are taken first, which keeps a
        KL near zero exact in float32); p_r = 0 adds 0 (also for -inf logits), p_p = 0 where
        p_r > 0 gives +inf. ``dc`` (C, V) or None.
    """
    c = tgt.shape[0]
    dc = None
    if cap:
        y *= scale / cap
        np.tanh(y, out=y)
        if want_grad:
            dc = scale * (1.0 - np.square(y[:c]))  # c'(z_p) from tanh(scale z_p / cap)
        y *= cap
    elif scale != 1.0:
        y *= scale
    y_t = y[np.arange(2 * c), np.concatenate([tgt, tgt])]
    diff = work.get("diff", (c, y.shape[1]))
    with np.errstate(invalid="ignore"):  # -inf - -inf where both mask a token: p_r = 0 below
        np.subtract(y[c:], y[:c], out=diff)  # y_r - y_p, before the exponential overwrites y
    m = y.max(axis=1, keepdims=True)
    y -= m
    np.exp(y, out=y)
    s = y.sum(axis=1, keepdims=True)
    y *= 1.0 / s
    with np.errstate(invalid="ignore"):
        diff *= y[c:]
    cross = diff.sum(axis=1)
    bad = np.flatnonzero(np.isnan(cross))  # -inf - -inf where both mask a token: p_r = 0 adds 0
    if bad.size:
        cross[bad] = np.nan_to_num(diff[bad], nan=0.0, posinf=np.inf, neginf=-np.inf).sum(axis=1)
    m, s = m[:, 0], s[:, 0]
    kl = cross + (m[:c] - m[c:]) + np.log(s[:c] / s[c:])
    tok = y_t - m - np.log(s)
    return tok[:c], tok[c:], kl.astype(np.float32), dc
