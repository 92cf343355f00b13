"""Truncation of an encoded pair to ``max_length`` tokens per sequence.

Budget from the longer response; the prompt is cut only as much as needed but kept at
>= ``max_prompt_length`` tokens (keep_end keeps its last tokens, keep_start its first; BOS
always stays); then responses are cut to what is left.
"""

from __future__ import annotations

from ..config import TRUNCATION_MODES
from ..errors import UserError


def truncate_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
    keep_first: int = 0,
):
    """Fit a pair into ``max_length`` tokens per sequence.

    Budget from the longer response R: if ``len(prompt) + R <= max_length`` nothing changes.
    Else the prompt keeps ``min(len(prompt), max(max_length - R, max_prompt_length))`` tokens
    (keep_end: its last ones, keep_start: its first ones; the first ``keep_first`` tokens, the
    BOS, always stay), and both responses are cut to their first ``max_length - len(prompt)``
    tokens (a cut response loses its EOS). Both sequences keep the same prompt ids.

    Returns:
        (prompt, chosen, rejected, prompt_cut: bool, response_cut: bool).

    Raises:
        ValueError: bad limits or mode.
    """
    if truncation_mode not in TRUNCATION_MODES:
        raise UserError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if not 1 <= max_prompt_length < max_length:
        raise UserError(
            f"need 1 <= max_prompt_length < max_length, got max_prompt_length="
            f"{max_prompt_length}, max_length={max_length} (--max-prompt-length, --max-length)"
        )
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected, False, False
    keep = min(len(prompt), max(max_length - longest, max_prompt_length))
    prompt_cut = keep < len(prompt)
    if prompt_cut:
        head = prompt[: min(keep_first, keep)]
        n = keep - len(head)
        body = prompt[len(head) :]
        body = body[len(body) - n :] if truncation_mode == "keep_end" else body[:n]
        prompt = head + body
    room = max_length - len(prompt)
    response_cut = longest > room
    return prompt, chosen[:room], rejected[:room], prompt_cut, response_cut
