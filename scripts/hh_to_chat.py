"""Convert Anthropic HH-RLHF text pairs into conversational (message-list) preference records.

HH stores each side as one text, ``"\\n\\nHuman: ...\\n\\nAssistant: ...``, possibly several
turns, the two sides sharing the dialogue up to the last ``"\\n\\nAssistant:"``. This writes one
JSON line per pair, ``{"chosen": [messages], "rejected": [messages]}`` (whole conversations ending
with the assistant reply: tdpo-mlx's conversational format takes the prompt as everything before
it), so that a chat model's own template frames the turns::

    python scripts/hh_to_chat.py ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz hh-chat.jsonl
    tdpo-mlx data inspect --model smollm2-135m-instruct --data hh-chat.jsonl

Pairs whose text does not parse as alternating turns ending with an assistant reply are skipped
and counted (printed at the end).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from tdpo_mlx.atomic import write_jsonl

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


def convert(rows, limit: int | None = None) -> tuple[list[dict], int]:
    """(records, skipped) for HH rows ``{"chosen": str, "rejected": str}``."""
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="HH file (.jsonl or .jsonl.gz) with chosen/rejected texts")
    p.add_argument("output", type=Path, help="output .jsonl of conversational records")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N pairs")
    args = p.parse_args(argv)
    opener = gzip.open if args.input.suffix == ".gz" else open
    with opener(args.input, "rt", encoding="utf-8") as f:
        rows = (json.loads(line) for line in f if line.strip())
        records, skipped = convert(rows, args.limit)
    write_jsonl(args.output, records)
    print(f"wrote {len(records)} conversational pairs to {args.output} ({skipped} skipped: not alternating turns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
