"""Anthropic HH-RLHF text pairs as conversational (message-list) records, so that a chat model's
own template frames the turns.

HH stores each side as one text, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, possibly several
turns, the two sides sharing the dialogue up to the last ``"\\n\\nAssistant:"``. A record here is
``{"chosen": [messages], "rejected": [messages]}``, whole conversations ending with the assistant
reply (the conversational format of :mod:`tdpo_mlx.data.records` takes the prompt as everything
before it).
"""

from __future__ import annotations

import re

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_to_messages(text: str) -> list[dict] | None:
    """Messages ``[{"role": "user"|"assistant", "content": str}, ...]`` of one HH text (contents
    stripped of surrounding whitespace), or None when it is not alternating turns that start
    with a user turn and end with an assistant one."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        return None
    roles = [_ROLES[r] for r in parts[1::2]]
    if roles[-1] != "assistant" or any(a == b for a, b in zip(roles, roles[1:])) or roles[0] != "user":
        return None
    return [{"role": r, "content": c.strip()} for r, c in zip(roles, parts[2::2])]


def hh_chat_records(rows, limit: int | None = None) -> tuple[list[dict], int]:
    """``(records, skipped)`` for HH rows ``{"chosen": str, "rejected": str}``: conversational
    records, and how many rows did not parse as alternating turns (:func:`hh_to_messages`)."""
    out, skipped = [], 0
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        chosen, rejected = hh_to_messages(row["chosen"]), hh_to_messages(row["rejected"])
        if chosen is None or rejected is None:
            skipped += 1
            continue
        out.append({"chosen": chosen, "rejected": rejected})
    return out, skipped
