"""The controlled-sentiment experiment's prompts and preference pairs: the shipped review
openers, their train / held-out split, and best-vs-worst pairs from scored samples."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np

from ..data import EncodedPair
from ..generation import Sample
from .config import OPENERS


def load_openers(path=OPENERS) -> list[str]:
    """The shipped review openers, one per line (blank lines skipped)."""
    lines = [x.strip() for x in pathlib.Path(path).read_text(encoding="utf-8").splitlines()]
    return [x for x in lines if x]


def split_prompts(prompts: Sequence[str], n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed`` and cut disjoint train / held-out prompt lists.

    Raises:
        ValueError: when fewer than ``n_train + n_eval`` prompts are available.
    """
    if n_train + n_eval > len(prompts):
        raise ValueError(f"need {n_train} + {n_eval} prompts, only {len(prompts)} available")
    order = np.random.default_rng(seed).permutation(len(prompts))
    shuffled = [prompts[i] for i in order]
    return shuffled[:n_train], shuffled[n_train : n_train + n_eval]


def build_pairs(samples: Sequence[Sample], rewards: Sequence[float], min_gap: float) -> tuple[list[dict], dict]:
    """Preference pairs from scored samples: per prompt, best vs worst completion.

    Args:
        samples: completions, several per ``prompt_index``.
        rewards: one reward per sample (higher is preferred).
        min_gap: a prompt gives a pair only when max - min reward >= ``min_gap`` (near-ties are
            noise for a preference model) and the two completions differ.

    Returns:
        (pairs, summary): pairs are dicts with prompt, chosen, rejected (texts), chosen_reward,
        rejected_reward, prompt_ids, chosen_ids, rejected_ids, in prompt order; the first
        sample wins ties for best and for worst. summary counts prompts, pairs and skips.
    """
    if len(samples) != len(rewards):
        raise ValueError(f"{len(samples)} samples but {len(rewards)} rewards")
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.prompt_index, []).append(i)
    pairs, skipped_gap, skipped_same = [], 0, 0
    for p in sorted(groups):
        idx = groups[p]
        r = [rewards[i] for i in idx]
        best = idx[int(np.argmax(r))]
        worst = idx[int(np.argmin(r))]
        if rewards[best] - rewards[worst] < min_gap or len(idx) < 2:
            skipped_gap += 1
            continue
        c, j = samples[best], samples[worst]
        if c.completion_ids == j.completion_ids:
            skipped_same += 1
            continue
        pairs.append(
            dict(
                prompt=c.prompt,
                chosen=c.completion,
                rejected=j.completion,
                chosen_reward=float(rewards[best]),
                rejected_reward=float(rewards[worst]),
                prompt_ids=list(c.prompt_ids),
                chosen_ids=list(c.completion_ids),
                rejected_ids=list(j.completion_ids),
            )
        )
    summary = {
        "prompts": len(groups),
        "pairs": len(pairs),
        "skipped_near_tie": skipped_gap,
        "skipped_identical": skipped_same,
        "chosen_reward_mean": float(np.mean([x["chosen_reward"] for x in pairs])) if pairs else math.nan,
        "rejected_reward_mean": float(np.mean([x["rejected_reward"] for x in pairs])) if pairs else math.nan,
        "sample_reward_mean": float(np.mean(rewards)) if len(rewards) else math.nan,
    }
    return pairs, summary


def encoded(pairs: list[dict]) -> list:
    """Pair dicts (with prompt_ids/chosen_ids/rejected_ids) as trainer pairs."""
    return [EncodedPair(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"], index=i) for i, p in enumerate(pairs)]
