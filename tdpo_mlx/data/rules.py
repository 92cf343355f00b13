"""The tokenizer as the token rules see it: BOS/EOS and end tokens, special ids, chat template.

See :mod:`tdpo_mlx.data.encode` for the rules themselves.
"""

from __future__ import annotations

from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import UserError, read_text
from .sources import DataError


class TokenRules:
    """A tokenizer plus the decisions the token rules need.

    Args:
        tokenizer: a ``transformers`` tokenizer or an mlx-lm ``TokenizerWrapper`` (its extra
            ``eos_token_ids`` count as end tokens).
        chat_template: a Jinja template string or a path to a file holding one; overrides the
            tokenizer's template.
        add_bos: force BOS on/off; None follows the tokenizer (see :mod:`tdpo_mlx.data.encode`).

    Raises:
        ValueError: the tokenizer has no EOS token; the chat_template file is missing.
    """

    def __init__(self, tokenizer, *, chat_template: str | None = None, add_bos: bool | None = None):
        extra_eos: set[int] = set()
        if isinstance(tokenizer, TokenizerWrapper):
            extra_eos = set(tokenizer.eos_token_ids or ())
            tokenizer = tokenizer._tokenizer
        self.tok = tokenizer
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        if self.eos_id is None:
            raise UserError("the tokenizer has no EOS token (eos_token_id is None); responses need one")
        if add_bos is None:
            add_bos = self.bos_id is not None and list(tokenizer.encode("a"))[:1] == [self.bos_id]
        if add_bos and self.bos_id is None:
            raise UserError("add_bos=True but the tokenizer has no BOS token")
        self.add_bos = bool(add_bos)
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(t, "special", False):
                special.add(int(i))
        self.special_ids = special | extra_eos | {self.eos_id}
        self.end_ids = extra_eos | {self.eos_id}
        self.chat_template = load_chat_template(chat_template)
        # the Rust tokenizer decodes the same text without transformers' per-call overhead
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = (
            backend if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False) else None
        )

    # -- text <-> ids
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens added (special-token strings still parse)."""
        return [int(i) for i in self.tok.encode(text, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ``ids`` with special tokens, no clean-up of spaces."""
        ids = [int(i) for i in ids]
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def offsets(self, text: str):
        """(ids, char offsets) or (ids, None) for tokenizers without offset mapping."""
        try:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            return [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            return self.encode(text), None

    # -- chat
    @property
    def has_template(self) -> bool:
        return bool(self.chat_template or getattr(self.tok, "chat_template", None))

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if not self.has_template:
            raise DataError(
                "conversational data needs a chat template but the tokenizer has none; "
                "pass --chat-template FILE.jinja (chat_template= in Python)"
            )
        kw = {"chat_template": self.chat_template} if self.chat_template else {}
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw)

    def strip_bos(self, ids: list[int]) -> tuple[list[int], bool]:
        """Leading BOS ids removed; whether there was one."""
        k = 0
        while self.bos_id is not None and k < len(ids) and ids[k] == self.bos_id:
            k += 1
        return ids[k:], k > 0

    def holds_bos_or_end(self, ids: list[int]) -> bool:
        """Whether ``ids`` hold a BOS or an end token (inside a response: refused)."""
        return (self.bos_id is not None and self.bos_id in ids) or any(i in self.end_ids for i in ids)

    def with_bos(self, ids: list[int], force: bool = False) -> list[int]:
        body, _ = self.strip_bos(ids)
        return ([self.bos_id] if (self.add_bos or force) else []) + body


def load_chat_template(chat_template: str | None) -> str | None:
    """A template string from ``chat_template`` (a Jinja string or a path to a file)."""
    if chat_template is None:
        return None
    if "{%" in chat_template or "{{" in chat_template:
        return chat_template
    text = read_text(chat_template, "chat template file (.jinja)", "--chat-template")
    if not text.strip():
        raise UserError(f"--chat-template {chat_template}: the file is empty")
    return text
