"""Tiny random mlx-lm models and adapters, built locally (nothing is downloaded).

``make_model_dir`` writes an mlx-lm model directory (config.json in Hugging Face names, random
weights from mlx-lm's own model class, a word-level tokenizer) for one of the presets in
``CONFIGS``: ``"tiny"`` (the trainer and model tests: a 2-block llama over a 36-word vocabulary,
mlx's default init with the embeddings scaled by 4 so logits are not flat) or ``"llama"``,
``"qwen2"``, ``"gemma3_text"`` (the export tests: small Gaussian weights around the norm's 1).
``make_adapter`` attaches LoRA/DoRA with mlx-lm's tooling, fills the factors with random non-zero
values and saves them in mlx-lm's adapter format; ``mlx_logits`` is the float32 reference forward.
``make_review_model_dir`` (the evaluation and demo tests) writes a 2-layer gemma3 with a byte-level
BPE tokenizer trained on movie-review sentences (BOS prepended), for generation and sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path
from mlx_lm.models import gemma3_text
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters
from mlx_lm.utils import _get_classes, load_model, quantize_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

VOCAB = 96

BASE = dict(
    hidden_size=64,
    num_hidden_layers=3,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS = {
    "llama": dict(BASE, model_type="llama", rms_norm_eps=1e-5, tie_word_embeddings=False, head_dim=16),
    "qwen2": dict(BASE, model_type="qwen2", rms_norm_eps=1e-6, tie_word_embeddings=True),
    "gemma3_text": dict(
        BASE,
        model_type="gemma3_text",
        hidden_size=80,  # sqrt(80) is not a bfloat16 number: exercises the embedding-scale alignment
        head_dim=16,
        query_pre_attn_scalar=16,
        rms_norm_eps=1e-6,
        sliding_window=64,
        sliding_window_pattern=2,
        rope_local_base_freq=10000.0,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
}

# The trainer tests' model: mlx's default init (embeddings x4), ids 4..35 are words.
CONFIGS["tiny"] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "vocab_size": 64,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TEXT_IDS = [1, 17, 5, 33, 71, 8, 90, 42, 42, 3, 64, 12]

WORDS = (
    "the a cat dog sat ran on mat is good bad yes no hello world what why how i you like do not ok fine great "
    "terrible answer question please thanks sure"
).split()


def make_tokenizer(out: Path, words: bool = False) -> None:
    """A word-level tokenizer: ``<pad> <s> </s> <unk>`` + ``WORDS`` (``words``, split on
    whitespace and punctuation) or ``<pad> <bos> <eos> <unk> t4 .. t95`` (split on whitespace)."""
    if words:
        vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
        bos, eos, pre = "<s>", "</s>", pre_tokenizers.Whitespace()
    else:
        vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
        vocab.update({f"t{i}": i for i in range(4, VOCAB)})
        bos, eos, pre = "<bos>", "<eos>", pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(out))


def build_model(config: dict) -> nn.Module:
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if config.get("tie_word_embeddings") and "lm_head" in model:  # gemma3_text decides in sanitize
        model.pop("lm_head")
        if hasattr(model, "tie_word_embeddings"):
            model.tie_word_embeddings = True
    return model


def make_model_dir(out: Path, arch: str = "tiny", seed: int = 0, quantize: int | None = None, **overrides) -> Path:
    """Write a random tiny ``arch`` model (a key of ``CONFIGS``; ``overrides`` replace config
    entries) as an mlx-lm directory into ``out``; return ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(CONFIGS[arch], **overrides)
    mx.random.seed(seed)
    model = build_model(config)
    if arch == "tiny":
        # larger random weights than the default init so logits (and the KL terms) are not flat
        model.update(
            tree_map_with_path(lambda k, v: v * 4.0 if k.endswith("embed_tokens.weight") else v, model.parameters())
        )
    else:
        rng = np.random.default_rng(seed)

        def rand(a):
            noise = rng.normal(0.0, 0.08, size=a.shape).astype(np.float32)
            return mx.array(noise) + (1.0 if a.ndim == 1 and arch != "gemma3_text" else 0.0)

        model.update(tree_map(rand, model.parameters()))
    if quantize is not None:
        model, config = quantize_model(model, config, group_size=32, bits=quantize)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())), {"format": "mlx"})
    with open(out / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    make_tokenizer(out, words=arch == "tiny")
    return out


def make_adapter(
    model_dir: Path,
    out: Path,
    *,
    num_layers: int = 2,
    keys: list[str] | None = None,
    dora: bool = False,
    rank: int = 4,
    scale: float = 2.0,
    seed: int = 1,
    extra: dict | None = None,
) -> Path:
    """Attach LoRA/DoRA (mlx-lm's ``linear_to_lora_layers``) to the last ``num_layers`` layers,
    randomize every adapter tensor and save ``adapters.safetensors`` + ``adapter_config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_model(Path(model_dir))
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    linear_to_lora_layers(model, num_layers, params, use_dora=dora)
    rng = np.random.default_rng(seed)
    adapter = {}
    for name, a in tree_flatten(model.parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lora_a", "lora_b"):
            adapter[name] = mx.array(rng.normal(0.0, 0.2, size=a.shape).astype(np.float32))
        elif leaf == "m":
            adapter[name] = a.astype(mx.float32) * mx.array(rng.uniform(0.8, 1.2, size=a.shape).astype(np.float32))
    mx.save_safetensors(str(out / "adapters.safetensors"), adapter)
    cfg = {
        "fine_tune_type": "dora" if dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": params,
    }
    cfg.update(extra or {})
    with open(out / "adapter_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
    return out


def random_lora(model: nn.Module, seed: int = 1, rank: int = 4, num_layers: int | None = None, dora: bool = False):
    """Freeze ``model``, attach LoRA (or DoRA) of ``rank`` (scale 2) to every linear of its last
    ``num_layers`` blocks (default all) and fill ``lora_b`` with N(0, 0.05^2) so that the policy
    differs from the reference (adapters off). Returns the model."""
    model.freeze()
    n = len(model.layers) if num_layers is None else num_layers
    linear_to_lora_layers(model, n, {"rank": rank, "scale": 2.0, "dropout": 0.0}, use_dora=dora)
    key = mx.random.key(seed)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            key, sub = mx.random.split(key)
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=sub)
    mx.eval(model.parameters())
    return model


def mlx_logits(model_dir: Path, adapter_path: Path | None = None, ids=TEXT_IDS) -> np.ndarray:
    """float32 logits (L, V) of the mlx-lm model (with the adapter when given) on ``ids``."""
    model, _ = load_model(Path(model_dir))
    if adapter_path is not None:
        model = load_adapters(model, str(adapter_path))
    model.eval()
    model.update(
        tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters())
    )
    out = model(mx.array([list(ids)]))
    return np.array(out[0].astype(mx.float32))


REVIEWS = [
    "I went into this film expecting a great movie and it was wonderful",
    "the film was terrible and bad, a boring waste of time",
    "this movie is a good story with fine acting",
    "the plot was awful and the ending was sad",
] * 10


def make_review_model_dir(path, seed: int = 0) -> Path:
    """A random 2-layer Gemma-3-style mlx-lm model dir with a ~300-token byte-level BPE tokenizer.

    BOS=2 is prepended by the tokenizer, EOS=1, PAD=0. Loads with ``mlx_lm.load(path)``.
    """
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(REVIEWS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(str(d))
    cfg = dict(
        model_type="gemma3_text",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=2,
        head_dim=16,
        num_key_value_heads=1,
        vocab_size=tok.get_vocab_size(),
        sliding_window=16,
        sliding_window_pattern=2,
        query_pre_attn_scalar=16,
        eos_token_id=1,
    )
    mx.random.seed(seed)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(cfg))
    mx.save_safetensors(str(d / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (d / "config.json").write_text(json.dumps(cfg))
    return d
