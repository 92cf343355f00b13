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
import sys
from pathlib import Path

from tdpo_mlx.atomic import write_jsonl
from tdpo_mlx.data.hh import hh_chat_records as convert
from tdpo_mlx.data.hh import hh_to_messages  # noqa: F401  (the script's API: tests import it from here)


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
