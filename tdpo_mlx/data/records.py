"""Preference data formats: one raw row -> a :class:`PreferenceRecord`, without any tokenizer.

Three kinds of record:

- ``"text"``: prompt, chosen and rejected strings (standard format; ``system`` prepended);
- ``"implicit"``: chosen and rejected whole texts sharing the dialogue (Anthropic HH); the
  prompt is found later, by :mod:`tdpo_mlx.data.encode` (it may need the tokenizer);
- ``"chat"``: prompt messages plus the chosen / rejected assistant messages (conversational).

Errors name the record and the option that fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import DATA_FORMATS as FORMATS
from ..errors import UserError, did_you_mean
from .sources import DataError

_FORMAT_ALIASES = {
    "hh": "implicit",
    "chat": "conversational",
    "messages": "conversational",
    "prompt": "standard",
    "text": "standard",
}

_KEY_OPTION = {
    "prompt": "prompt_key (--prompt-key)",
    "chosen": "chosen_key (--chosen-key)",
    "rejected": "rejected_key (--rejected-key)",
    "system": "system_key (--system-key)",
}


@dataclass
class PreferenceRecord:
    """One preference record before tokenization.

    Attributes:
        kind: ``"text"``, ``"implicit"`` or ``"chat"`` (see module docstring).
        prompt: str (text), None (implicit) or list of message dicts (chat, generation prompt
            is added at rendering).
        chosen / rejected: str (text: response only; implicit: whole text) or list of message
            dicts (chat: the reply messages only, normally one assistant message).
        index: 0-based record index in its source.
        where: human-readable location (file:line or dataset record).
        repaired: None, or the name of a repair made (``"prompt_in_responses"``: the prompt was
            repeated at the start of both responses and was removed from them).
    """

    kind: str
    prompt: Any
    chosen: Any
    rejected: Any
    index: int
    where: str
    repaired: str | None = None


def normalize_format(data_format: str) -> str:
    f = _FORMAT_ALIASES.get(data_format, data_format)
    if f not in FORMATS:
        raise UserError(
            f"--data-format: unknown format {data_format!r}; use one of {', '.join(FORMATS)}"
            + did_you_mean(data_format, FORMATS)
        )
    return f


def _is_messages(v) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and (not v or isinstance(v[0], dict)))


def detect_format(row: dict, *, prompt_key: str, chosen_key: str, rejected_key: str, where: str = "") -> str:
    """The format of a source from its first row: conversational if any field is a message
    list, standard if it has a prompt, implicit (HH) if it has exactly the HH shape.

    Raises:
        DataError: neither (see :func:`check_implicit_shape`).
    """
    vals = [row.get(k) for k in (prompt_key, chosen_key, rejected_key)]
    if any(_is_messages(v) for v in vals if v is not None):
        return "conversational"
    if prompt_key in row:
        return "standard"
    check_implicit_shape(row, where, prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
    return "implicit"


def check_implicit_shape(row: dict, where: str, *, prompt_key: str, chosen_key: str, rejected_key: str) -> None:
    """A record without a prompt is read as implicit (HH: two whole dialogues) only when its
    text fields are exactly the chosen and rejected ones; any other text key may be the prompt
    under another name, and guessing would drop it silently.

    Raises:
        DataError: naming the keys found and the options that map them.
    """
    missing = [k for k in (chosen_key, rejected_key) if k not in row]
    other = sorted(str(k) for k, v in row.items() if k not in (chosen_key, rejected_key) and isinstance(v, str))
    found = sorted(map(str, row))
    where = where or "record"
    if missing:
        raise DataError(
            f"{where}: record has no {missing[0]!r} key (and no {prompt_key!r}); keys found: {found}. "
            "Map yours with --prompt-key, --chosen-key and --rejected-key"
        )
    if other:
        raise DataError(
            f"{where}: record has no {prompt_key!r} key and is not the implicit (HH) shape of exactly "
            f"{chosen_key!r} and {rejected_key!r} texts: it also has {other}; keys found: {found}. "
            f"If {other[0]!r} holds the prompt pass --prompt-key {other[0]}; to split whole dialogues "
            "and ignore the other keys pass --data-format implicit"
        )


def _need(row: dict, key: str, role: str, where: str):
    if key not in row:
        raise DataError(
            f"{where}: record has no {key!r} key (the {role}); keys found: {sorted(row)}. "
            f"Map yours with {_KEY_OPTION[role]}"
        )
    return row[key]


def _need_str(row, key, role, where) -> str:
    v = _need(row, key, role, where)
    if not isinstance(v, str):
        raise DataError(
            f"{where}: {key!r} must be a string in this format, got {type(v).__name__}"
            + ("; message lists need data_format='conversational'" if _is_messages(v) else "")
        )
    return v


def _messages(v, default_role: str, key: str, where: str) -> list[dict]:
    if isinstance(v, str):
        return [{"role": default_role, "content": v}]
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list):
        raise DataError(f"{where}: {key!r} must be a list of messages or a string, got {type(v).__name__}")
    out = []
    for j, m in enumerate(v):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            got = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise DataError(f"{where}: {key!r} message {j} needs 'role' and 'content' keys, got {got}")
        out.append(dict(m))
    return out


def _same_messages(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["role"] == y["role"] and x["content"] == y["content"] for x, y in zip(a, b))


def _with_system(msgs: list[dict], system) -> list[dict]:
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + msgs
    return msgs


class RecordRefused(Exception):
    """A record that cannot become a pair (counted and dropped, or raised in strict mode)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def to_record(
    row: dict,
    index: int,
    where: str,
    fmt: str,
    *,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
    system_key: str,
    system_separator: str = "\n\n",
    detected: bool = False,
) -> PreferenceRecord:
    """One raw row -> :class:`PreferenceRecord` in format ``fmt`` (not ``"auto"``).

    Raises:
        DataError: missing key or wrong value type (names the record and the mapping option).
        RecordRefused: a conversation whose chosen/rejected histories differ before the last reply.

    ``detected``: the format was detected, not given: an implicit record must have exactly
    the HH shape (:func:`check_implicit_shape`).
    """
    system = row.get(system_key)
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: {system_key!r} must be a string, got {type(system).__name__}")
    keys = dict(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
    if fmt == "standard":
        return _standard_record(row, index, where, system and system + system_separator, **keys)
    if fmt == "implicit":
        if detected:
            check_implicit_shape(row, where, **keys)
        chosen = _need_str(row, chosen_key, "chosen", where)
        rejected = _need_str(row, rejected_key, "rejected", where)
        return PreferenceRecord("implicit", None, chosen, rejected, index, where)
    if fmt != "conversational":
        raise ValueError(f"format {fmt!r}")
    return _chat_record(row, index, where, system, **keys)


def _standard_record(row, index, where, system_prefix, *, prompt_key, chosen_key, rejected_key) -> PreferenceRecord:
    """A ``"text"`` record; a prompt repeated at the start of both responses is kept once."""
    prompt = _need_str(row, prompt_key, "prompt", where)
    chosen = _need_str(row, chosen_key, "chosen", where)
    rejected = _need_str(row, rejected_key, "rejected", where)
    repaired = None
    if prompt.strip() and chosen.startswith(prompt) and rejected.startswith(prompt):
        # the prompt repeated inside both responses would be scored: keep it once
        chosen, rejected, repaired = chosen[len(prompt) :], rejected[len(prompt) :], "prompt_in_responses"
    if system_prefix:
        prompt = system_prefix + prompt
    return PreferenceRecord("text", prompt, chosen, rejected, index, where, repaired)


def _chat_record(row, index, where, system, *, prompt_key, chosen_key, rejected_key) -> PreferenceRecord:
    """A ``"chat"`` record: prompt messages from ``prompt_key``, else from whole conversations."""
    chosen = _messages(_need(row, chosen_key, "chosen", where), "assistant", chosen_key, where)
    rejected = _messages(_need(row, rejected_key, "rejected", where), "assistant", rejected_key, where)
    repaired = None
    if row.get(prompt_key) is not None:
        prompt = _messages(row[prompt_key], "user", prompt_key, where)
        chosen, rejected, repaired = _replies_after_prompt(
            prompt, chosen, rejected, where, prompt_key, chosen_key, rejected_key
        )
    else:
        prompt, chosen, rejected = _split_conversations(chosen, rejected, where, chosen_key, rejected_key)
    if not prompt and not system:
        raise DataError(
            f"{where}: conversation has no prompt messages (nothing before the reply); "
            f"give a {prompt_key!r} key or whole conversations"
        )
    return PreferenceRecord("chat", _with_system(prompt, system), chosen, rejected, index, where, repaired)


def _replies_after_prompt(prompt, chosen, rejected, where, prompt_key, chosen_key, rejected_key):
    """(chosen, rejected, repaired): the replies with prompt turns repeated at their start removed.

    Raises:
        DataError: a reply holds a user or system turn.
    """
    repaired = None
    # Some datasets repeat the prompt turns at the start of chosen/rejected.
    if len(chosen) > len(prompt) and _same_messages(chosen[: len(prompt)], prompt):
        chosen, repaired = chosen[len(prompt) :], "prompt_in_responses"
    if len(rejected) > len(prompt) and _same_messages(rejected[: len(prompt)], prompt):
        rejected, repaired = rejected[len(prompt) :], "prompt_in_responses"
    for key, resp in ((chosen_key, chosen), (rejected_key, rejected)):
        bad = [m["role"] for m in resp if m["role"] in ("user", "system")]
        if bad:
            raise DataError(
                f"{where}: {key!r} holds a {bad[0]!r} turn after the prompt; with a "
                f"{prompt_key!r} key the responses must be the assistant reply only"
            )
    return chosen, rejected, repaired


def _split_conversations(chosen, rejected, where, chosen_key, rejected_key):
    """(prompt, chosen reply, rejected reply) of two whole conversations: the prompt is
    everything before the final assistant message.

    Raises:
        DataError: a conversation does not end with an assistant message.
        RecordRefused: ``histories_differ``.
    """
    for key, conv in ((chosen_key, chosen), (rejected_key, rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: {key!r} must end with an assistant message "
                f"(got {conv[-1]['role'] if conv else 'an empty list'!r})"
            )
    history = chosen[:-1]
    if not _same_messages(history, rejected[:-1]):
        n = min(len(history), len(rejected) - 1)
        k = next((j for j in range(n) if not _same_messages([history[j]], [rejected[j]])), n)
        raise RecordRefused(
            "histories_differ",
            f"{where}: chosen and rejected conversations differ before the last reply "
            f"(first at message {k}); only the final assistant message may differ",
        )
    return history, chosen[-1:], rejected[-1:]
