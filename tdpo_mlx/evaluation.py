"""Generation and evaluation of a policy against its reference.

Measures (all on held-out prompts):

- reward: mean of a reward function over the policy's samples (:mod:`tdpo_mlx.rewards`);
- sequence KL: ``sum_t KL(pi_theta(.|x, y_<t) || pi_ref(.|x, y_<t))`` over the generated tokens
  y ~ pi_theta of each sample (full vocabulary at every position, nats), averaged over samples.
  This is the divergence *of the policy from the reference* on the policy's own samples, i.e. a
  per-sample exact-expectation estimate of KL(pi_theta || pi_ref) at sequence level, the
  x-axis of the reward/KL frontier of DPO (Rafailov et al., 2023, Fig. 2) and TDPO (Zeng et al.,
  2024, Fig. 2a). (Training regularizes the other direction, KL(pi_ref || pi_theta), Eq. 8.)
- entropy: the policy's predictive entropy ``-sum_v pi_theta(v) log pi_theta(v)`` averaged over
  all generated tokens (nats/token), the diversity measure of TDPO Table 1;
- win rate: fraction of prompts/sample slots where the policy's sample gets a higher reward than
  the reference's sample for the same prompt and slot, ties counting one half;
- distinct-n: unique n-grams / all n-grams over the policy's completions (Li et al., 2016).

Samples come from :mod:`tdpo_mlx.generation`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from .backend import default_compute_dtype
from .data import pad_id as pad_of
from .generation import Sample, generate_samples, progress_bar
from .head_plan import post_logits, verified_plan
from .models import adapters_disabled, load_policy, read_adapter_config

KL_DIRECTION = "KL(pi_theta || pi_ref), summed over generated tokens, on samples from pi_theta"


# ----------------------------------------------------------------------------------------------
# Teacher-forced statistics on samples


def token_kl_entropy(policy_logits: mx.array, reference_logits: mx.array | None):
    """Per-position KL(pi_theta || pi_ref) and entropy of pi_theta over the full vocabulary.

    Args:
        policy_logits: (..., V) logits of pi_theta, any float dtype.
        reference_logits: (..., V) logits of pi_ref, or None (then KL is returned as zeros).

    Returns:
        (kl, entropy), each (...) float32, nats:
        kl = sum_v p(v) (log p(v) - log q(v)),  entropy = -sum_v p(v) log p(v),
        with p = softmax(policy_logits), q = softmax(reference_logits), via log_softmax.
    """
    lp = policy_logits.astype(mx.float32)
    lp = lp - mx.logsumexp(lp, axis=-1, keepdims=True)
    p = mx.exp(lp)
    entropy = -_sum_last(p * lp)
    if reference_logits is None:
        return mx.zeros_like(entropy), entropy
    lq = reference_logits.astype(mx.float32)
    lq = lq - mx.logsumexp(lq, axis=-1, keepdims=True)
    kl = _sum_last(p * (lp - lq))
    return kl, entropy


def _sum_last(x: mx.array, block: int = 512) -> mx.array:
    """Sum over the last axis in two levels (blocks of ``block``): float32 sums over a 262k
    vocabulary drift by ~1e-3 relative when accumulated in one pass."""
    v = x.shape[-1]
    if v <= block:
        return mx.sum(x, axis=-1)
    pad = (-v) % block
    if pad:
        x = mx.concatenate([x, mx.zeros((*x.shape[:-1], pad), dtype=x.dtype)], axis=-1)
    return mx.sum(mx.sum(x.reshape(*x.shape[:-1], -1, block), axis=-1), axis=-1)


def _pad_rows(samples: Sequence[Sample], pad_id: int):
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(x) for x in seqs)
    inputs = np.full((len(seqs), width), pad_id, dtype=np.int32)
    for r, x in enumerate(seqs):
        inputs[r, : len(x)] = x
    # positions whose logits predict completion tokens: [len(prompt)-1, len(prompt)-1+len(completion))
    tc = max(1, max(len(s.completion_ids) for s in samples))
    pos = np.zeros((len(seqs), tc), dtype=np.int32)
    mask = np.zeros((len(seqs), tc), dtype=np.float32)
    for r, s in enumerate(samples):
        n = len(s.completion_ids)
        p0 = len(s.prompt_ids) - 1
        pos[r, :n] = np.arange(p0, p0 + n)
        pos[r, n:] = p0
        mask[r, :n] = 1.0
    return mx.array(inputs), mx.array(pos), mx.array(mask)


def sample_statistics(
    model,
    samples: Sequence[Sample],
    *,
    reference_model=None,
    compute_kl: bool = True,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
    desc: str = "score",
) -> dict:
    """Teacher-forced sequence KL and entropy of ``model`` on ``samples``.

    The reference is ``reference_model`` when given, else ``model`` with its adapters switched
    off (:func:`tdpo_mlx.models.adapters_disabled`). Both see the same inputs; only the
    completion positions are scored. Memory: one (batch_size, L, V) logits tensor per model.

    Args:
        model: the policy pi_theta (mlx-lm model).
        samples: N :class:`Sample` (typically drawn from ``model``).
        compute_kl: False skips the reference forward (KL reported as 0), e.g. for the reference itself.
        batch_size: rows per forward pass.
        pad_id: token id used for right padding (masked out).

    Returns:
        dict of (N,) float64 numpy arrays: ``kl`` (sum over the sample's generated tokens of
        KL(pi_theta || pi_ref), nats), ``entropy_sum`` (sum of per-token entropies, nats),
        ``n_tokens`` (generated tokens scored, EOS included when sampled).
    """
    n = len(samples)
    kl = np.zeros(n)
    ent = np.zeros(n)
    ntok = np.zeros(n)
    bar = progress_bar(n, desc, progress)
    for start in range(0, n, batch_size):
        chunk = [s for s in samples[start : start + batch_size]]
        if all(len(s.completion_ids) == 0 for s in chunk):
            bar.update(len(chunk))
            continue
        inputs, pos, mask = _pad_rows(chunk, pad_id)
        logits = _logits_at(model, inputs, pos)
        ref = None
        if compute_kl:
            if reference_model is not None:
                ref = _logits_at(reference_model, inputs, pos)
            else:
                with adapters_disabled(model):
                    ref = _logits_at(model, inputs, pos)
        tkl, tent = token_kl_entropy(logits, ref)
        skl = mx.sum(tkl * mask, axis=-1)
        sent = mx.sum(tent * mask, axis=-1)
        mx.eval(skl, sent)
        kl[start : start + len(chunk)] = np.array(skl)
        ent[start : start + len(chunk)] = np.array(sent)
        ntok[start : start + len(chunk)] = np.array(mx.sum(mask, axis=-1))
        bar.update(len(chunk))
    bar.close()
    return {"kl": kl, "entropy_sum": ent, "n_tokens": ntok}


def _logits_at(model, inputs: mx.array, pos: mx.array) -> mx.array:
    """Logits (N, Tc, V) of ``model`` at positions ``pos`` (N, Tc) of ``inputs`` (N, L).

    Applies the LM head only at those positions when :mod:`tdpo_mlx.stats` can split the model
    into body and head (the 262k-vocabulary head dominates a small model's cost); else slices
    the full (N, L, V) logits.
    """
    idx = pos[..., None]
    plan = verified_plan(model)
    if plan is None:
        return mx.take_along_axis(model(inputs), idx, axis=1)
    hidden = mx.take_along_axis(plan.body(inputs), idx, axis=1)
    return post_logits(plan.head(hidden), plan.scale, plan.cap)


# ----------------------------------------------------------------------------------------------
# Plain metrics


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Fraction of paired comparisons the policy wins, ties counting 1/2.

    Args:
        policy_rewards, reference_rewards: equal-length sequences; element i of both belongs to
            the same prompt and sample slot.

    Returns:
        mean_i [1(p_i > r_i) + 0.5 * 1(p_i == r_i)], in [0, 1].

    Raises:
        ValueError: empty or unequal lengths.
    """
    p = np.asarray(policy_rewards, dtype=np.float64)
    r = np.asarray(reference_rewards, dtype=np.float64)
    if p.shape != r.shape or p.size == 0:
        raise ValueError(f"win_rate needs two equal, non-empty sequences, got {p.shape} and {r.shape}")
    return float(np.mean((p > r) + 0.5 * (p == r)))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / total n-grams over all texts.

    Words are whitespace-separated, lower-cased. Returns 0.0 when there is no n-gram at all.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    total = 0
    seen = set()
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def summarize(
    name: str,
    samples: Sequence[Sample],
    rewards: Sequence[float],
    stats: dict,
    reference_rewards: Sequence[float] | None = None,
) -> dict:
    """One row of the evaluation table (plain floats, JSON-ready).

    Keys: name, n_samples, reward_mean, reward_std, seq_kl_mean, seq_kl_std, kl_direction,
    entropy_per_token, tokens_per_sample, finished_fraction, win_rate_vs_reference (None without
    reference rewards), distinct_1, distinct_2.
    """
    r = np.asarray(rewards, dtype=np.float64)
    ntok = stats["n_tokens"]
    total = float(ntok.sum())
    row = {
        "name": name,
        "n_samples": len(samples),
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()),
        "seq_kl_mean": float(stats["kl"].mean()),
        "seq_kl_std": float(stats["kl"].std()),
        "kl_direction": KL_DIRECTION,
        "entropy_per_token": float(stats["entropy_sum"].sum() / total) if total else math.nan,
        "tokens_per_sample": float(ntok.mean()),
        "finished_fraction": float(np.mean([s.finished for s in samples])),
        "win_rate_vs_reference": None,
        "distinct_1": distinct_n([s.completion for s in samples], 1),
        "distinct_2": distinct_n([s.completion for s in samples], 2),
    }
    if reference_rewards is not None:
        row["win_rate_vs_reference"] = win_rate(r, reference_rewards)
    return row


@dataclasses.dataclass
class EvalResult:
    """Output of :func:`evaluate`: table rows (policy, reference) and the raw samples."""

    policy: dict
    reference: dict
    policy_samples: list
    policy_rewards: list
    reference_samples: list
    reference_rewards: list


def evaluate(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward_fn: Callable,
    *,
    name: str = "policy",
    samples_per_prompt: int = 2,
    score_batch_size: int = 8,
    reference=None,
    progress: bool = True,
    **sampling,
) -> EvalResult:
    """Sample from the policy and the reference on ``prompts``; score, compare and summarize.

    Args:
        model: the policy (mlx-lm model with adapters attached); the reference is the same model
            with adapters switched off.
        reward_fn: ``fn(prompts, completions) -> list[float]``.
        samples_per_prompt: completions per prompt, for each of policy and reference.
        sampling: the other sampling settings of :func:`tdpo_mlx.generation.generate_samples`
            (``max_tokens``, ``temp``, ``top_p``, ``seed``, ``batch_size``), the same for both.
        reference: optional precomputed ``(samples, rewards, row)`` of the reference on the same
            prompts/settings (the demo reuses it across methods); computed when None.

    Returns:
        :class:`EvalResult`.
    """
    run = dict(samples_per_prompt=samples_per_prompt, score_batch_size=score_batch_size, progress=progress, **sampling)
    if reference is None:
        with adapters_disabled(model):
            ref_samples, ref_stats, ref_rewards = _sample_and_score(
                model, tokenizer, prompts, reward_fn, "reference", compute_kl=False, **run
            )
        ref_row = summarize("reference", ref_samples, ref_rewards, ref_stats, ref_rewards)
    else:
        ref_samples, ref_rewards, ref_row = reference
    samples, stats, rewards = _sample_and_score(model, tokenizer, prompts, reward_fn, name, compute_kl=True, **run)
    row = summarize(name, samples, rewards, stats, ref_rewards)
    return EvalResult(row, ref_row, samples, rewards, ref_samples, ref_rewards)


def _sample_and_score(
    model,
    tokenizer,
    prompts,
    reward_fn,
    name: str,
    *,
    compute_kl: bool,
    score_batch_size: int,
    progress: bool,
    **sampling,
):
    """(samples, teacher-forced statistics, rewards) of ``model`` as it is (``compute_kl``
    False for the reference itself: its KL to itself is 0)."""
    samples = generate_samples(model, tokenizer, prompts, progress=progress, desc=f"sample {name}", **sampling)
    stats = sample_statistics(
        model,
        samples,
        compute_kl=compute_kl,
        batch_size=score_batch_size,
        pad_id=pad_of(tokenizer),
        progress=progress,
        desc=f"score {name}",
    )
    rewards = list(reward_fn([s.prompt for s in samples], [s.completion for s in samples]))
    return samples, stats, rewards


# ----------------------------------------------------------------------------------------------
# Report formatting

TABLE_COLUMNS = [
    ("name", "model", "{}"),
    ("reward_mean", "reward (mean)", "{:.3f}"),
    ("seq_kl_mean", "seq. KL(π‖π_ref) (nats)", "{:.2f}"),
    ("entropy_per_token", "entropy (nats/token)", "{:.3f}"),
    ("win_rate_vs_reference", "win rate vs ref", "{:.3f}"),
    ("distinct_1", "distinct-1", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("tokens_per_sample", "tokens/sample", "{:.1f}"),
]


def markdown_table(rows: Sequence[dict]) -> str:
    """A GitHub markdown table of evaluation rows (see :func:`summarize`)."""
    head = "| " + " | ".join(c[1] for c in TABLE_COLUMNS) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(TABLE_COLUMNS))) + "|"
    lines = [head, sep]
    for row in rows:
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            v = row.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Model loading


def load_model(model: str, adapter_path=None):
    """Load an mlx-lm model (path, hub id or named source such as ``gemma3-270m``) with optional
    trained adapters, in the backend's compute dtype (float32 on CPU), in eval mode.

    The adapters' ``adapter_config.json`` (mlx-lm keys, as written by ``tdpo-mlx train``) decides
    the LoRA/DoRA layout (:func:`tdpo_mlx.models.load_trained_adapters`) and whether the base is
    quantized (QLoRA, its ``quantize`` key).

    Returns:
        (model, tokenizer); adapters (if any) are active, and switching them off with
        :func:`tdpo_mlx.models.adapters_disabled` gives the reference.

    Raises:
        NotFoundError: ``adapter_path`` lacks adapters.safetensors or adapter_config.json.
        ValueError: adapter tensors that the model does not have.
    """
    if adapter_path is None:
        m, tok = load_policy(model, adapters=False)
    else:
        quantize = read_adapter_config(adapter_path).get("quantize")
        m, tok = load_policy(model, adapter_path=adapter_path, quantize=quantize)
    m.set_dtype(default_compute_dtype())  # adapters saved in another dtype
    m.eval()
    return m, tok
