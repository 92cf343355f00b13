"""Rebuild a model's tokenizer (``tokenizers`` + ``transformers``) from GGUF metadata."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..atomic import write_json
from .reader import GGUFContents, GGUFImportError

# ggml token types (llama.cpp llama_token_type / gguf.TokenType)
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _generate_merges(tokens: list[str], rank: dict[str, float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece-BPE vocabulary (the GGUF stores none).

    A merge (l, r) exists for every vocabulary token t = l + r whose two halves are tokens;
    merges are ordered by the rank of t (best first), ties by the halves' lengths, as
    ``transformers.tokenization_utils_base.generate_merges`` and sentencepiece do."""
    merges = []
    for tok in tokens:
        if len(tok) < 2:
            continue
        r = rank[tok]
        local = []
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in vocab and right in vocab:
                local.append((left, right))
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((r, len(lft), len(rgt), lft, rgt) for lft, rgt in local)
    merges.sort(key=lambda m: (m[0], m[1], m[2]))
    return [(m[3], m[4]) for m in merges]


# llama.cpp pre-tokenizer names -> the split regexes it applies one after the other
# (llama.cpp src/llama-vocab.cpp, llm_tokenizer_bpe: each regex splits the pieces of the previous one)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_DIGITS_SPLIT = r"\p{N}"  # every digit its own piece (StarCoder-style vocabularies, SmolLM)
_PRE_TOKENIZER_SPLITS = {
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "smaug-bpe": (_LLAMA3_SPLIT,),
    "gpt-2": (_GPT2_SPLIT,),
    "default": (_GPT2_SPLIT,),
    "smollm": (_DIGITS_SPLIT, _GPT2_SPLIT),
    "starcoder": (_DIGITS_SPLIT, _GPT2_SPLIT),
    "refact": (_DIGITS_SPLIT, _GPT2_SPLIT),
    "codeshell": (_DIGITS_SPLIT, _GPT2_SPLIT),
}


def build_tokenizer(g: GGUFContents):
    """Rebuild the model's tokenizer as a ``tokenizers.Tokenizer`` from GGUF metadata.

    ``tokenizer.ggml.model`` = ``llama`` (SentencePiece BPE with byte fallback: llama, gemma) or
    ``gpt2`` (byte-level BPE: qwen2, llama 3). BOS is prepended by the post-processor when
    ``tokenizer.ggml.add_bos_token`` says so. Control tokens become special added tokens,
    user-defined ones plain added tokens, so both stay whole.

    Returns ``(tokenizer, info)`` where ``info`` has the special token strings
    (bos/eos/unk/pad), ``add_bos``, ``add_eos`` and ``chat_template`` (or None).
    Raises GGUFImportError for other tokenizer models.
    """
    md = g.metadata
    kind = md.get("tokenizer.ggml.model")
    raw_tokens: list[str] = md.get("tokenizer.ggml.tokens") or []
    if not raw_tokens:
        raise GGUFImportError(f"{g.path}: no tokenizer.ggml.tokens in the metadata; the file carries no tokenizer")
    types: list[int] = md.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(raw_tokens)
    control = [i for i, t in enumerate(types) if t == _TOKEN_CONTROL]
    if kind == "llama":
        gemma = g.architecture.startswith("gemma")
        tokens = _gemma_spaces(raw_tokens) if gemma else raw_tokens
        tk = _sentencepiece_bpe(md, tokens, types, gemma)
    elif kind == "gpt2":
        tokens = raw_tokens
        tk, vocab = _byte_level_bpe(g, tokens, types)
        control = [i for i in control if tokens[i] in vocab]
    else:
        raise GGUFImportError(
            f"{g.path}: tokenizer model {kind!r} is not supported (supported: 'llama' SentencePiece BPE, 'gpt2' byte-level BPE)"
        )
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    # user-defined tokens stay whole in raw text (e.g. "\n\n"); ones respelled above are BPE pieces
    user = [t for i, t in enumerate(tokens) if types[i] == _TOKEN_USER_DEFINED and t == raw_tokens[i]]
    if user:
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    info = _special_info(md, tokens, kind)
    post = _post_processor(md, info, kind)
    if post is not None:
        tk.post_processor = post
    return tk, info


def _token_at(md: dict, tokens: list[str], key: str) -> str | None:
    """The token whose id metadata ``tokenizer.ggml.<key>`` names (None when unset or out of range)."""
    i = md.get(f"tokenizer.ggml.{key}")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def _gemma_spaces(tokens: list[str]) -> list[str]:
    """Gemma files spell tokens of 2+ spaces with real spaces; the BPE sees "▁" (transformers'
    gguf gemma_tokenizer does the same respelling)."""
    return ["\u2581" * len(t) if (" " in t and not t.strip(" ")) else t for t in tokens]


def _sentencepiece_bpe(md: dict, tokens: list[str], types: list[int], gemma: bool) -> Tokenizer:
    """SentencePiece BPE with byte fallback (``tokenizer.ggml.model`` = ``llama``): merges from
    the scores (Gemma: from file order), a "▁" prefix unless ``add_space_prefix`` is false."""
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    if gemma:  # Gemma's scores do not follow merge order; file order does
        rank = {t: i for t, i in vocab.items()}
    else:
        scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        rank = {t: -float(scores[i]) for t, i in vocab.items()}
    mergeable = [t for t, i in vocab.items() if types[i] in (_TOKEN_NORMAL, _TOKEN_USER_DEFINED)]
    merges = _generate_merges(mergeable, rank, vocab)
    unk = _token_at(md, tokens, "unknown_token_id") or "<unk>"
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    if md.get("tokenizer.ggml.add_space_prefix", not gemma):
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tk.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tk.normalizer = normalizers.Replace(" ", "\u2581")
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tk


def _byte_level_bpe(g: GGUFContents, tokens: list[str], types: list[int]) -> tuple[Tokenizer, dict[str, int]]:
    """Byte-level BPE (``tokenizer.ggml.model`` = ``gpt2``) with llama.cpp's pre-tokenizer splits;
    returns the tokenizer and its vocabulary (tokens in GPT-2's byte spelling)."""
    md = g.metadata
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, t in enumerate(tokens):
        if types[i] in (_TOKEN_NORMAL, _TOKEN_BYTE, _TOKEN_UNKNOWN) and not set(t) <= alphabet:
            t = "".join(spelling[b] for b in t.encode("utf-8"))
        vocab.setdefault(t, i)
    raw_merges = md.get("tokenizer.ggml.merges")
    if not raw_merges:
        raise GGUFImportError(f"{g.path}: byte-level BPE vocabulary without tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in raw_merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = md.get("tokenizer.ggml.pre", "default")
    splits = _PRE_TOKENIZER_SPLITS.get(pre)
    if splits is None:
        warnings.warn(
            f"{g.path}: pre-tokenizer {pre!r} is not known here (known: {sorted(_PRE_TOKENIZER_SPLITS)}); "
            "splitting text with GPT-2's regex, token ids may differ from llama.cpp's",
            stacklevel=3,
        )
        splits = (_GPT2_SPLIT,)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *(pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    return tk, vocab


def _special_info(md: dict, tokens: list[str], kind: str) -> dict:
    """The special token strings (bos/eos/unk/pad; pad falls back to eos), ``add_bos`` (default:
    SentencePiece models), ``add_eos`` and the chat template."""
    eos = _token_at(md, tokens, "eos_token_id")
    pad = _token_at(md, tokens, "padding_token_id")
    return {
        "bos_token": _token_at(md, tokens, "bos_token_id"),
        "eos_token": eos,
        "unk_token": _token_at(md, tokens, "unknown_token_id"),
        "pad_token": pad if pad is not None else eos,
        "add_bos": bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        "add_eos": bool(md.get("tokenizer.ggml.add_eos_token", False)),
        "chat_template": md.get("tokenizer.chat_template"),
    }


def _post_processor(md: dict, info: dict, kind: str):
    """A template adding BOS/EOS as the flags say; else byte-level offsets (``gpt2``); else None."""
    bos, eos = info["bos_token"], info["eos_token"]
    specials: dict[str, int] = {}
    prefix: list[str] = []
    suffix: list[str] = []
    if info["add_bos"] and bos is not None:
        prefix.append(bos)
        specials[bos] = int(md["tokenizer.ggml.bos_token_id"])
    if info["add_eos"] and eos is not None:
        suffix.append(eos)
        specials[eos] = int(md["tokenizer.ggml.eos_token_id"])
    if specials:

        def seq(piece: str, type_id: int) -> list[str]:
            return [f"{t}:{type_id}" for t in prefix] + [f"{piece}:{type_id}"] + [f"{t}:{type_id}" for t in suffix]

        return processors.TemplateProcessing(
            single=" ".join(seq("$A", 0)),
            pair=" ".join(seq("$A", 0) + seq("$B", 1)),
            special_tokens=list(specials.items()),
        )
    if kind == "gpt2":
        return processors.ByteLevel(trim_offsets=False)
    return None


def save_tokenizer(g: GGUFContents, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``tokenizer.json``/``tokenizer_config.json``/``special_tokens_map.json`` into ``out_dir``
    so that ``transformers.AutoTokenizer.from_pretrained(out_dir)`` and ``mlx_lm.load`` work.
    Returns the ``info`` dict of :func:`build_tokenizer`."""
    tk, info = build_tokenizer(g)
    kwargs = {k: info[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if info[k] is not None}
    if info["chat_template"]:
        kwargs["chat_template"] = info["chat_template"]
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **kwargs)
    hf.save_pretrained(str(out_dir))
    # the post-processor above already adds BOS/EOS; record the flags for readers of the config
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    tcfg.update({"add_bos_token": info["add_bos"], "add_eos_token": info["add_eos"]})
    tcfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    write_json(cfg_path, tcfg)
    return info
