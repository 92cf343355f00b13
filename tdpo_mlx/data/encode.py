"""Preference records -> token ids with exact prompt/response boundaries, truncation, summary.

Token rules (issue 3; cases D1-D9 in ``../shared/cases/preference-data.md``):

- One prompt, encoded once, shared by chosen and rejected. Response ids continue from the
  prompt boundary and hold only the response (what is scored).
- BOS exactly once, at index 0, when the tokenizer uses one: ``bos_token_id`` is set and the
  tokenizer adds it on its own ``encode`` (or the chat template renders it). Tokenizers without
  BOS (``bos_token`` None, e.g. Qwen) get none. ``add_bos`` overrides.
- **Plain text** (standard and implicit formats): prompt = [BOS] + encode(prompt text);
  response = encode(response text) + [EOS], both encoded *without* special tokens; a response
  text that already ends with the EOS string (or starts with BOS) is not doubled.
  The response is encoded **separately** from the prompt (what the model emits when it
  generates the response after the prompt; no token straddles the seam), then checked *in
  context*: decode(prompt ids + response ids) must equal decode(prompt ids) + response text.
  SentencePiece tokenizers with a dummy prefix (Llama-style ``prepend_scheme="first"``) fail
  that check for a response without a leading space (they add a word-start piece); then the
  response ids are taken from encoding prompt + response jointly, provided the prompt ids are
  a prefix of it and that decodes right; else (a prompt ending in a space, the Llama-2
  ``"[INST] ... [/INST] "`` layout) the seam moves into the prompt: the shared prompt ids are
  the longest common prefix of both joint encodings, each response the rest of its own. Every
  scored sequence decodes to exactly prompt + response; a pair where no tokenization does is
  dropped as ``decode_mismatch`` (counted, never trained on). Gemma has no dummy prefix: HH responses start
  with a space (``" I can't..."``), encoded as the word's leading-space piece; on the real HH
  file with the Gemma 3 tokenizer every response passes the check.
  A ``system`` string is put before the prompt with a blank line.
- **Conversations** (chat template, the tokenizer's or ``chat_template``): prompt = the prompt
  messages rendered with ``add_generation_prompt=True``; each full conversation rendered with
  ``add_generation_prompt=False``; all encoded without adding special tokens. The boundary is
  computed on ids: the longest common prefix of the prompt ids and both full ids (so a
  generation prompt that is not a prefix of the rendered reply, D4, still gives exactly the
  reply's ids). Checked per record: the history rendered without the generation prompt is a
  prefix of both full renderings, and the reply text appears in the decoded response; else an
  error naming the record. Whitespace after the final end-of-turn token is dropped and
  repeated end tokens collapse to one (D1); if the template ends a reply without a special
  token, EOS is appended.
- **Truncation** (:func:`truncate_pair`): budget from the longer response; the prompt is cut
  only as much as needed but kept at >= ``max_prompt_length`` tokens (keep_end keeps its last
  tokens, keep_start its first; BOS always stays); then responses are cut to what is left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import UserError, read_text
from .sources import DataError, PreferenceRecord, RecordRefused

HH_MARKER = "\n\nAssistant:"
TRUNCATION_MODES = ("keep_end", "keep_start")

DROP_REASONS = {
    "empty_response": "empty (or whitespace-only) response",
    "identical_responses": "chosen == rejected",
    "histories_differ": "chosen/rejected differ before the last reply",
    "identical_after_truncation": "chosen == rejected after truncation",
    "special_token_in_response": "BOS or an end token inside a response",
    "empty_prompt": "empty prompt with a tokenizer without BOS",
    "too_long": "a response would be truncated away",
    "decode_mismatch": "no tokenization decodes back to prompt + response exactly",
}


REPAIRS = {
    "prompt_in_responses": "records repeated the prompt at the start of both responses "
    "(removed from the responses; it is scored nowhere)"
}


class TokenRules:
    """A tokenizer plus the decisions the token rules need.

    Args:
        tokenizer: a ``transformers`` tokenizer or an mlx-lm ``TokenizerWrapper`` (its extra
            ``eos_token_ids`` count as end tokens).
        chat_template: a Jinja template string or a path to a file holding one; overrides the
            tokenizer's template.
        add_bos: force BOS on/off; None follows the tokenizer (see module docstring).

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


# ----------------------------------------------------------------------------- plain text


def split_implicit(
    rules: TokenRules, chosen: str, rejected: str, where: str, marker: str | None = HH_MARKER
) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two whole texts sharing a dialogue.

    The prompt is the text up to and including the last ``marker`` (Anthropic HH, as in the
    TDPO/DPO reference code's ``extract_anthropic_prompt``); where either text lacks the marker,
    it is the longest common prefix that ends on a token boundary of both texts, backed off so
    each response keeps at least one token.

    Raises:
        RecordRefused: ``histories_differ`` (the marker prompts differ), ``identical_responses``.
    """
    if chosen == rejected:
        raise RecordRefused("identical_responses", f"{where}: chosen == rejected")
    if marker:
        i, j = chosen.rfind(marker), rejected.rfind(marker)
        if i >= 0 and j >= 0:
            p, q = chosen[: i + len(marker)], rejected[: j + len(marker)]
            if p != q:
                raise RecordRefused(
                    "histories_differ", f"{where}: chosen and rejected differ before the last {marker!r}"
                )
            return p, chosen[len(p) :], rejected[len(p) :]
    c_ids, c_off = rules.offsets(chosen)
    r_ids, _ = rules.offsets(rejected)
    k = 0
    while k < min(len(c_ids), len(r_ids)) and c_ids[k] == r_ids[k]:
        k += 1
    k = min(k, len(c_ids) - 1, len(r_ids) - 1)
    end = 0
    while k > 0:
        end = c_off[k - 1][1] if c_off is not None else len(rules.decode(c_ids[:k]))
        if chosen[:end] == rejected[:end] and end < min(len(chosen), len(rejected)):
            break
        k -= 1
        end = 0
    return chosen[:end], chosen[end:], rejected[end:]


def encode_response_text(rules: TokenRules, text: str, where: str, name: str) -> list[int]:
    """Response ids: encode(text) + [EOS]; leading BOS / trailing end tokens not doubled.

    Raises:
        RecordRefused: ``empty_response`` (nothing but whitespace), ``special_token_in_response``.
    """
    if not text.strip():
        raise RecordRefused("empty_response", f"{where}: the {name} response is empty")
    ids, _ = rules.strip_bos(rules.encode(text))
    ids = _drop_trailing_ends(rules, ids)
    if not ids:
        raise RecordRefused("empty_response", f"{where}: the {name} response has no tokens besides end tokens")
    if (rules.bos_id is not None and rules.bos_id in ids) or any(i in rules.end_ids for i in ids):
        raise RecordRefused(
            "special_token_in_response",
            f"{where}: the {name} response holds a BOS or end-of-sequence token inside its text",
        )
    return ids + [rules.eos_id]


def _drop_trailing_ends(rules: TokenRules, ids: list[int]) -> list[int]:
    """Remove end tokens (and whitespace between/after them) from the end of ``ids``."""
    ids = list(ids)
    while True:
        j = len(ids)
        while j > 0 and ids[j - 1] not in rules.special_ids and not rules.decode([ids[j - 1]]).strip():
            j -= 1
        if j > 0 and ids[j - 1] in rules.end_ids:
            ids = ids[: j - 1]
            continue
        return ids


def encode_text_record(rules: TokenRules, rec: PreferenceRecord, marker: str | None = HH_MARKER):
    """(prompt_ids, chosen_ids, rejected_ids, 0) of a text record whose scored sequences decode
    to exactly prompt + response (see :func:`_fit_seam`).

    Raises:
        RecordRefused: empty/identical responses, special tokens inside one, an empty prompt
            without BOS, or ``decode_mismatch`` (no tokenization decodes back to the text).
    """
    if rec.kind == "implicit":
        prompt, chosen, rejected = split_implicit(rules, rec.chosen, rec.rejected, rec.where, marker)
    else:
        prompt, chosen, rejected = rec.prompt, rec.chosen, rec.rejected
    c = encode_response_text(rules, chosen, rec.where, "chosen")
    r = encode_response_text(rules, rejected, rec.where, "rejected")
    if chosen == rejected:
        raise RecordRefused("identical_responses", f"{rec.where}: chosen == rejected")
    p = rules.with_bos(rules.encode(prompt))
    if not p:
        raise RecordRefused(
            "empty_prompt",
            f"{rec.where}: empty prompt and the tokenizer has no BOS: the first response token could not be scored",
        )
    p, c, r = _fit_seam(
        rules, prompt, p, (_scored_text(rules, chosen), c), (_scored_text(rules, rejected), r), where=rec.where
    )
    return p, c, r, 0


def _fit_seam(rules: TokenRules, prompt: str, p: list[int], *responses, where: str = ""):
    """Prompt and response ids such that each sequence decodes to exactly prompt + response.

    In order: (1) the separately encoded responses, when decode(prompt ids + response ids) is
    decode(prompt ids) + the response text (no token straddles the seam, no extra word-start
    piece); (2) else, per response, the ids that follow the prompt ids in the joint encoding of
    prompt + response (SentencePiece's dummy prefix on a response without a leading space);
    (3) else the seam moves into the prompt: the prompt ids become the longest common prefix of
    both joint encodings that decodes to a prefix of the prompt (a prompt ending in a space
    before a word, ``"[INST] ... [/INST] "`` + ``"Sure"``), and each response is the rest of its
    joint encoding; the whole sequence must then decode to the prompt + response text.

    Raises:
        RecordRefused: ``decode_mismatch`` when none of the three decodes back exactly.
    """
    where = where or "record"
    fast = [ids if _seam_ok(rules, p, ids, text) else None for text, ids in responses]
    if all(f is not None for f in fast):
        return (p, *fast)
    pj = rules.encode(prompt)
    joint = [rules.encode(prompt + text) for text, _ in responses]
    alt = [
        f if f is not None else _after_prefix(rules, p, pj, j, text) for f, j, (text, _) in zip(fast, joint, responses)
    ]
    if all(a is not None for a in alt):
        return (p, *alt)
    moved = _moved_seam(rules, prompt, joint, [text for text, _ in responses])
    if moved is not None:
        return moved
    bad = next(name for name, a in zip(("chosen", "rejected"), alt) if a is None)
    raise RecordRefused(
        "decode_mismatch",
        f"{where}: no tokenization of prompt + {bad} response decodes back to that text exactly "
        "(the tokenizer merges or adds characters at the seam)",
    )


def _scored_text(rules: TokenRules, text: str) -> str:
    """The part of a response text its ids hold: without a leading BOS string and without
    trailing end-token strings (and the whitespace after them), as :func:`encode_response_text` drops them."""
    bos = rules.tok.bos_token if rules.bos_id is not None else None
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    ends = [t for t in rules.tok.convert_ids_to_tokens(sorted(rules.end_ids)) if t]
    while True:
        s = text.rstrip()
        e = next((e for e in ends if s.endswith(e)), None)
        if e is None:
            return text
        text = s[: -len(e)]


def _seam_ok(rules: TokenRules, p: list[int], ids: list[int], text: str) -> bool:
    tail = p[-32:]  # enough context for the seam, cheaper than decoding long prompts
    return rules.decode(tail + ids[:-1]) == rules.decode(tail) + text


def _after_prefix(rules: TokenRules, p: list[int], pj: list[int], joint: list[int], text: str):
    """Response ids after the prompt ids inside the joint encoding, if the prompt ids are its
    prefix and they decode back; else None."""
    if joint[: len(pj)] != pj or len(joint) <= len(pj):
        return None
    alt = _drop_trailing_ends(rules, joint[len(pj) :])
    if not alt or not _seam_ok(rules, p, alt + [rules.eos_id], text):
        return None
    return alt + [rules.eos_id]


def _moved_seam(rules: TokenRules, prompt: str, joint: list[list[int]], texts: list[str]):
    """(prompt ids, *response ids) with the seam moved back into the prompt, or None."""
    want = rules.decode(rules.encode(prompt))
    k = min(_common_prefix(joint[0], joint[1]), len(joint[0]) - 1, len(joint[1]) - 1)
    while k > 0 and not want.startswith(rules.decode(joint[0][:k])):
        k -= 1
    p = rules.with_bos(joint[0][:k])
    if not p:
        return None
    out = [p]
    for j, text in zip(joint, texts):
        resp = _drop_trailing_ends(rules, j[k:])
        if not resp or rules.decode(j[:k] + resp) != want + text:
            return None
        if (rules.bos_id is not None and rules.bos_id in resp) or any(i in rules.end_ids for i in resp):
            return None
        out.append(resp + [rules.eos_id])
    return tuple(out)


# ----------------------------------------------------------------------------- conversations


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def _finish_reply(rules: TokenRules, ids: list[int]) -> list[int]:
    """Cut after the reply's end-of-turn token (dropping trailing whitespace and repeated end
    tokens); if the template ends the reply without a special token, drop its trailing
    whitespace and append EOS."""
    specials = [k for k, i in enumerate(ids) if i in rules.special_ids]
    if specials:
        last = specials[-1]
        if all(not rules.decode([i]).strip() for i in ids[last + 1 :]):
            ids = ids[: last + 1]
            # collapse end tokens separated only by whitespace: keep the first (end of turn)
            while True:
                j = len(ids) - 1
                k = j - 1
                while k >= 0 and ids[k] not in rules.special_ids and not rules.decode([ids[k]]).strip():
                    k -= 1
                if k >= 0 and ids[k] in rules.special_ids and (ids[j] in rules.end_ids or ids[k] in rules.end_ids):
                    ids = ids[: k + 1]
                    continue
                break
            return ids
    # no end-of-turn token: drop the template's trailing whitespace, end with EOS
    while ids and not rules.decode([ids[-1]]).strip():
        ids = ids[:-1]
    return ids + [rules.eos_id]


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def encode_chat_record(rules: TokenRules, rec: PreferenceRecord):
    """(prompt_ids, chosen_ids, rejected_ids, 0) of a chat record.

    Raises:
        ValueError: the template breaks the boundary (names the record).
        RecordRefused: empty or identical replies, special tokens inside a reply.
    """
    where = rec.where
    for name, msgs in (("chosen", rec.chosen), ("rejected", rec.rejected)):
        if not any(_content_text(m["content"]).strip() for m in msgs):
            raise RecordRefused("empty_response", f"{where}: the {name} reply is empty")

    def _key(msgs):
        return [(m["role"], _content_text(m["content"])) for m in msgs]

    if _key(rec.chosen) == _key(rec.rejected):
        raise RecordRefused("identical_responses", f"{where}: chosen == rejected")
    p_text = rules.render(rec.prompt, True)
    h_text = rules.render(rec.prompt, False)
    c_text = rules.render(rec.prompt + rec.chosen, False)
    r_text = rules.render(rec.prompt + rec.rejected, False)
    p_ids, h_ids, c_ids, r_ids = (rules.encode(t) for t in (p_text, h_text, c_text, r_text))
    for name, full in (("chosen", c_ids), ("rejected", r_ids)):
        if full[: len(h_ids)] != h_ids:
            raise DataError(
                f"{where}: the chat template renders the prompt messages differently once the {name} "
                f"reply is added (first difference at token {_common_prefix(full, h_ids)}); the "
                "response boundary cannot be found. Use another template (--chat-template)"
            )
    b = max(min(_common_prefix(p_ids, c_ids), _common_prefix(p_ids, r_ids)), len(h_ids))
    template_bos = rules.bos_id is not None and p_ids[:1] == [rules.bos_id]
    prompt = rules.with_bos(c_ids[:b], force=template_bos)
    out = []
    for name, full, msgs in (("chosen", c_ids, rec.chosen), ("rejected", r_ids, rec.rejected)):
        resp = _finish_reply(rules, full[b:])
        body = resp[:-1]
        if not body:
            raise RecordRefused("empty_response", f"{where}: the {name} reply renders to no tokens")
        if (rules.bos_id is not None and rules.bos_id in resp) or any(i in rules.end_ids for i in body):
            raise RecordRefused(
                "special_token_in_response", f"{where}: the {name} reply holds a BOS or end token inside it"
            )
        text = rules.decode(resp)
        for m in msgs:
            want = _content_text(m["content"]).strip()
            if want and want not in text:
                raise DataError(
                    f"{where}: the {name} reply's text is not in its scored tokens after the chat "
                    f"template (boundary at token {b}); the template alters or drops the reply. "
                    "Use another template (--chat-template)"
                )
        out.append(resp)
    if out[0] == out[1]:
        raise RecordRefused("identical_responses", f"{where}: chosen and rejected render to the same ids")
    return prompt, out[0], out[1], 0


# ----------------------------------------------------------------------------- truncation


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


# ----------------------------------------------------------------------------- summary


def _percentiles(values) -> dict:

    if not values:
        return {}
    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": int(a.max()),
        "mean": float(a.mean()),
    }


@dataclass
class DataSummary:
    """What loading did.

    Attributes:
        source, split, data_format: what was read and how it was understood.
        records: records read.
        kept: pairs kept.
        dropped: reason -> count (reasons in :data:`DROP_REASONS`).
        dropped_examples: reason -> first 5 record locations (file:line (record i)).
        dropped_records: reason -> first 20 record indices.
        repaired: repair -> count of kept records fixed on load (``prompt_in_responses``: the
            prompt was repeated at the start of both responses and removed from them).
        prompt_cut / response_cut: kept pairs whose prompt / a response was truncated.
        decode_mismatches: pairs dropped because no tokenization decodes back to prompt +
            response (the ``decode_mismatch`` drop reason).
        prompt_lengths / response_lengths / sequence_lengths: percentiles (tokens) of the kept
            pairs before truncation (prompt, each response) and after it (longer sequence).
        seconds: wall time of the load.
        max_length / max_prompt_length / truncation_mode: the limits used.
    """

    source: str = ""
    split: str = ""
    data_format: str = ""
    records: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)
    dropped_examples: dict = field(default_factory=dict)
    dropped_records: dict = field(default_factory=dict)
    repaired: dict = field(default_factory=dict)
    prompt_cut: int = 0
    response_cut: int = 0
    prompt_lengths: dict = field(default_factory=dict)
    response_lengths: dict = field(default_factory=dict)
    sequence_lengths: dict = field(default_factory=dict)
    seconds: float = 0.0
    max_length: int = 0
    max_prompt_length: int = 0
    truncation_mode: str = ""

    @property
    def decode_mismatches(self) -> int:
        return self.dropped.get("decode_mismatch", 0)

    def drop(self, reason: str, where: str, index: int = -1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        ex = self.dropped_examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)
        ids = self.dropped_records.setdefault(reason, [])
        if len(ids) < 20:
            ids.append(index)

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"data: {self.source} [{self.split}] format={self.data_format}",
            f"  records read {self.records}, pairs kept {self.kept}, dropped {sum(self.dropped.values())}"
            f"  ({self.seconds:.2f} s)",
        ]
        for reason, n in sorted(self.dropped.items()):
            ex = ", ".join(str(i) for i in self.dropped_records.get(reason, []))
            more = ", ..." if n > len(self.dropped_records.get(reason, [])) else ""
            lines.append(f"    dropped {n:>6} {DROP_REASONS.get(reason, reason)} (records {ex}{more})")
        for name, n in sorted(self.repaired.items()):
            lines.append(f"    repaired {n:>5} {REPAIRS.get(name, name)}")
        lines.append(
            f"  truncation max_length={self.max_length} max_prompt_length={self.max_prompt_length} "
            f"mode={self.truncation_mode}: prompt cut in {self.prompt_cut}, "
            f"a response cut in {self.response_cut} pairs"
        )
        lines.append("  tokens            min     p50     p90     p99     max    mean")
        for name, d in (
            ("prompt", self.prompt_lengths),
            ("response", self.response_lengths),
            ("sequence (kept)", self.sequence_lengths),
        ):
            if d:
                lines.append(
                    f"  {name:<15} {d['min']:>5} {d['p50']:>7.1f} {d['p90']:>7.1f} {d['p99']:>7.1f} "
                    f"{d['max']:>7} {d['mean']:>7.1f}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """Plain JSON-able dict (for run metadata)."""

        return asdict(self)

    def __str__(self) -> str:
        return self.format()
