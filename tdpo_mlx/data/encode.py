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

Truncation is :mod:`.truncate`, the load summary :mod:`.summary`, the tokenizer wrapper :mod:`.rules`.
"""

from __future__ import annotations

from .records import PreferenceRecord, RecordRefused
from .rules import TokenRules
from .sources import DataError

HH_MARKER = "\n\nAssistant:"


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
    if rules.holds_bos_or_end(ids):
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
        if rules.holds_bos_or_end(resp):
            return None
        out.append(resp + [rules.eos_id])
    return tuple(out)


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
    c = _chat_reply(rules, c_ids[b:], rec.chosen, f"{where}: the chosen reply", b)
    r = _chat_reply(rules, r_ids[b:], rec.rejected, f"{where}: the rejected reply", b)
    if c == r:
        raise RecordRefused("identical_responses", f"{where}: chosen and rejected render to the same ids")
    return prompt, c, r, 0


def _chat_reply(rules: TokenRules, ids: list[int], msgs: list[dict], what: str, boundary: int) -> list[int]:
    """Scored ids of one rendered reply (the ids after the boundary), checked to hold its text.

    Raises:
        RecordRefused: ``empty_response``, ``special_token_in_response``.
        DataError: the reply's text is not in its decoded ids (the template alters it).
    """
    resp = _finish_reply(rules, ids)
    body = resp[:-1]
    if not body:
        raise RecordRefused("empty_response", f"{what} renders to no tokens")
    if rules.holds_bos_or_end(body) or rules.bos_id in resp[-1:]:
        raise RecordRefused("special_token_in_response", f"{what} holds a BOS or end token inside it")
    text = rules.decode(resp)
    for m in msgs:
        want = _content_text(m["content"]).strip()
        if want and want not in text:
            raise DataError(
                f"{what}'s text is not in its scored tokens after the chat template (boundary at token "
                f"{boundary}); the template alters or drops the reply. Use another template (--chat-template)"
            )
    return resp
