"""Random encoded preference pairs over the ``"tiny"`` model's word ids."""

from __future__ import annotations

import numpy as np

from tdpo_mlx.data import EncodedPair


def random_pairs(n: int, vocab: int = 36, seed: int = 0, min_len: int = 2, max_len: int = 6) -> list[EncodedPair]:
    """``n`` random EncodedPairs with ids in [4, vocab) (specials excluded), BOS = 1 first, EOS = 2 appended."""
    rng = np.random.default_rng(seed)

    def seq(lo, hi):
        return rng.integers(4, vocab, size=int(rng.integers(lo, hi + 1))).tolist()

    return [
        EncodedPair([1] + seq(min_len, max_len), seq(1, max_len) + [2], seq(1, max_len) + [2], index=i)
        for i in range(n)
    ]
