"""Preference data: sources and formats -> records -> token ids with boundaries -> batches.

Batch contract (used by :mod:`tdpo_mlx.stats` and the trainer): see :class:`Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass
class Batch:
    """A padded batch of B preference pairs as 2B rows.

    Attributes:
        input_ids: (2B, L) int32, right-padded. Rows [0, B) are the chosen sequences and rows
            [B, 2B) the rejected ones; row i and row B + i come from the same pair and share
            the same prompt ids.
        lengths: (2B,) int32, real tokens per row (prompt + response).
        prompt_lengths: (2B,) int32, prompt tokens per row.
        n_pairs: B.
    """

    input_ids: mx.array
    lengths: mx.array
    prompt_lengths: mx.array
    n_pairs: int

    @property
    def targets(self) -> mx.array:
        """(2B, L-1) int32 next-token targets: ``targets[:, t] = input_ids[:, t + 1]``."""
        return self.input_ids[:, 1:]

    @property
    def target_mask(self) -> mx.array:
        """(2B, L-1) bool response-target mask built from lengths (never from token ids)."""
        return response_target_mask(self.lengths, self.prompt_lengths, self.input_ids.shape[1] - 1)

    @property
    def n_tokens(self) -> int:
        """Total number of real tokens in the batch."""
        return int(mx.sum(self.lengths).item())


def response_target_mask(lengths: mx.array, prompt_lengths: mx.array, width: int) -> mx.array:
    """Mask over next-token target positions 0..width-1 that predict response tokens.

    Target t predicts token t + 1, which is a response token iff
    ``prompt_length <= t + 1 < length``.

    Args:
        lengths: (N,) int, real tokens per row; prompt_lengths: (N,) int; width: L - 1.

    Returns:
        (N, width) bool.
    """
    t = mx.arange(width)[None, :] + 1
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])
