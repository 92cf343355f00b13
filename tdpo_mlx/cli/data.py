"""``tdpo-mlx data inspect``: show records as the model will see them, then the summary.

Each shown record prints the chosen and rejected sequences decoded token span by token span:
the prompt plain, the scored response between ``[[`` and ``]]`` (exactly the ids the loss
scores), with token counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DATA_FORMATS, TRUNCATION_MODES
from ..errors import UserError
from .common import HelpFormatter, check_model


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The data options shared with ``train`` (names = :func:`load_preference_data` keywords)."""
    p.add_argument(
        "--data",
        required=True,
        help="file (.jsonl/.jsonl.gz/.json/.parquet/.csv), directory with train/valid/test files, "
        "or a Hugging Face dataset id",
    )
    p.add_argument("--split", default="train", help="split of a directory or dataset")
    p.add_argument(
        "--data-format",
        default="auto",
        choices=DATA_FORMATS,
        help="record format (auto: message lists -> conversational, a prompt key -> standard, "
        "else implicit HH-style whole texts)",
    )
    p.add_argument("--prompt-key", default="prompt")
    p.add_argument("--chosen-key", default="chosen")
    p.add_argument("--rejected-key", default="rejected")
    p.add_argument("--system-key", default="system")
    p.add_argument("--chat-template", default=None, help="Jinja chat template file (overrides the tokenizer's)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence, at most")
    p.add_argument(
        "--max-prompt-length", type=int, default=256, help="prompt tokens always kept when a pair must be truncated"
    )
    p.add_argument("--truncation-mode", default="keep_end", choices=TRUNCATION_MODES)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect preference data", formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    q = sub.add_parser(
        "inspect",
        help="show the first records as the model sees them, then the summary",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  tdpo-mlx data inspect --model gemma3-270m --data pairs.jsonl -n 2\n"
        "  tdpo-mlx data inspect --model ./my-model --data qa.csv --prompt-key question --chosen-key good "
        "--rejected-key bad\n"
        "  tdpo-mlx data inspect --model ./my-model --data chats.jsonl --chat-template chatml.jinja",
    )
    q.add_argument(
        "--model", required=True, help="model directory, Hugging Face id or named source (its tokenizer is used)"
    )
    add_data_options(q)
    q.add_argument("-n", "--num-records", type=int, default=3, help="records to show (0 = only the summary)")
    q.add_argument("--show-ids", action="store_true", help="also print the token ids")
    q.add_argument("--strict", action="store_true", help="fail on the first refused record")
    p.set_defaults(func=run)


def load_tokenizer(model: str):
    """The tokenizer of ``model`` (:func:`tdpo_mlx.models.resolve_model`)."""
    from ..models import resolve_model

    model = resolve_model(model)

    if Path(model).is_dir():
        try:
            from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

            return mlx_load_tokenizer(Path(model))
        except Exception:  # noqa: BLE001 - fall back to transformers for plain tokenizer folders
            pass
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def render_pair(rules, pair) -> str:
    """Text of one pair: prompt, then each response span marked with ``[[ ]]``."""
    out = [
        f"record {pair.index}: prompt {len(pair.prompt_ids)} tokens, chosen {len(pair.chosen_ids)} scored, "
        f"rejected {len(pair.rejected_ids)} scored"
    ]
    for name, resp in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
        out.append(f"--- {name} ---")
        out.append(rules.decode(pair.prompt_ids) + "[[" + rules.decode(resp) + "]]")
    return "\n".join(out)


def run(args) -> int:
    if getattr(args, "data_command", None) != "inspect":
        raise UserError("choose an action: tdpo-mlx data inspect --model MODEL --data FILE")
    from ..data import load_preference_data
    from ..data.load import data_options
    from ..data.rules import TokenRules, load_chat_template
    from ..data.sources import check_data_path

    check_model(args.model)
    check_data_path(args.data, "--data")
    load_chat_template(args.chat_template)

    tokenizer = load_tokenizer(args.model)
    pairs, summary = load_preference_data(
        args.data, tokenizer=tokenizer, split=args.split, strict=args.strict, **data_options(args)
    )
    rules = TokenRules(tokenizer, chat_template=args.chat_template)
    print("scored tokens are shown between [[ and ]]; everything before them is the shared prompt\n")
    for pair in pairs[: max(args.num_records, 0)]:
        print(render_pair(rules, pair))
        if args.show_ids:
            print(f"prompt ids {pair.prompt_ids}\nchosen ids {pair.chosen_ids}\nrejected ids {pair.rejected_ids}")
        print()
    print(summary.format())
    return 0
