"""Tiny random mlx-lm models and a local word-level tokenizer, for fast trainer tests.

``make_model_dir(tmp, ...)`` writes an mlx-lm model directory (config.json, model.safetensors,
tokenizer.json + tokenizer_config.json) that ``mlx_lm.load`` accepts; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "is",
    "good",
    "bad",
    "yes",
    "no",
    "hello",
    "world",
    "what",
    "why",
    "how",
    "i",
    "you",
    "like",
    "do",
    "not",
    "ok",
    "fine",
    "great",
    "terrible",
    "answer",
    "question",
    "please",
    "thanks",
    "sure",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))
    return fast


def model_config(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128, vocab=64, tie=False) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def make_model_dir(path, seed: int = 0, **cfg_kw) -> Path:
    """Write a tiny random llama model directory to ``path`` and return it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model_config(**cfg_kw)
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    # Larger random weights than the default init so logits (and the KL terms) are not flat.
    params = [(k, v * 4.0 if k.endswith("embed_tokens.weight") else v) for k, v in tree_flatten(model.parameters())]
    mx.save_safetensors(str(path / "model.safetensors"), dict(params))
    (path / "config.json").write_text(json.dumps(cfg))
    make_tokenizer(path)
    return path


def random_pairs(n: int, vocab: int = 36, seed: int = 0, min_len: int = 2, max_len: int = 6):
    """``n`` random EncodedPairs with ids in [4, vocab) (specials excluded), EOS = 2 appended."""
    import numpy as np

    from tdpo_mlx.data import EncodedPair

    rng = np.random.default_rng(seed)

    def seq(lo, hi):
        return rng.integers(4, vocab, size=int(rng.integers(lo, hi + 1))).tolist()

    return [
        EncodedPair([1] + seq(min_len, max_len), seq(1, max_len) + [2], seq(1, max_len) + [2], index=i)
        for i in range(n)
    ]
