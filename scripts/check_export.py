#!/usr/bin/env python
"""Check a tdpo-mlx export against transformers/PEFT: equal logits, no missing/unexpected keys.

Exports ``--model`` + ``--adapter-path`` as (1) the dequantized base in HF layout (the PEFT base),
(2) a PEFT adapter and (3) a fused HF model, all float32; loads them with transformers/PEFT
(torch, CPU) and prints the largest |logit difference| against MLX on a fixed text:

* ``base``: transformers base vs MLX base (the frameworks' own floor, no adapter involved);
* ``peft``: PEFT-loaded adapter vs MLX with the adapter;
* ``hf``: fused transformers model vs MLX with the adapter;
* ``base_unaligned`` (Gemma): like ``base`` without aligning the embedding scale (see
  ``align_embed_scale``).

Needs the interop extra (``pip install torch==2.13.0 peft``); the package itself never imports
torch. Usage::

    python scripts/check_export.py --model DIR --adapter-path ADAPTER [--work DIR] [--text "..."]

Exit status 0 when every difference is at most ``--tol`` and PEFT reports no missing or
unexpected keys, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

# Run from a checkout: import this checkout's tdpo_mlx, not another installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day, and everyone was happy."


def mlx_logits(model_dir, adapter_path, ids) -> np.ndarray:
    """float32 logits (L, V) of the mlx-lm model (adapter attached when given)."""
    import mlx.core as mx
    from mlx.utils import tree_map

    import tdpo_mlx  # noqa: F401
    from tdpo_mlx.export import load_for_export

    model, _ = load_for_export(Path(model_dir), adapter_path)
    model.update(
        tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters())
    )
    return np.array(model(mx.array([list(ids)]))[0].astype(mx.float32))


def align_embed_scale(model) -> bool:
    """Round Gemma's embedding scale sqrt(hidden_size) to bfloat16 as mlx-lm computes it
    (``mx.array(hidden_size**0.5, mx.bfloat16)``; transformers keeps the float32 value for
    float32 weights). The two differ unless sqrt(hidden_size) is a bfloat16 number (Gemma 3 270M:
    25.2982 vs 25.25): a framework difference unrelated to the export. Returns whether the model
    has such a scale."""
    import torch

    emb = model.get_input_embeddings()
    if not hasattr(emb, "embed_scale"):
        return False
    value = torch.tensor(model.config.hidden_size**0.5, dtype=torch.bfloat16).float().item()
    emb.embed_scale.fill_(value)
    if hasattr(emb, "scalar_embed_scale"):
        emb.scalar_embed_scale = value
    return True


def hf_model(path, align: bool = True):
    """transformers model from ``path`` in float32 (eager attention), Gemma's embedding scale
    aligned with mlx-lm's when ``align`` (:func:`align_embed_scale`)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    if align:
        align_embed_scale(model)
    return model.eval()


def torch_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def peft_model(base_hf_dir, peft_dir):
    """(PEFT model, missing keys, unexpected keys, max |loaded - file| over adapter tensors).

    Missing/unexpected compare the adapter keys PEFT expects for this config
    (``get_peft_model_state_dict``) with the keys in ``adapter_model.safetensors``.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.numpy import load_file

    model = PeftModel.from_pretrained(hf_model(base_hf_dir), str(peft_dir)).eval()
    # the adapter's own tensors (not a copy of the base embedding matrix PEFT may add when an
    # embedding is targeted: loading never needs it)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    expected = {k: v.detach().float().numpy() for k, v in state.items()}
    saved = load_file(str(Path(peft_dir) / "adapter_model.safetensors"))
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    diff = max(
        (float(np.abs(expected[k] - saved[k].astype(np.float32)).max()) for k in set(saved) & set(expected)),
        default=0.0,
    )
    return model, missing, unexpected, diff


def run_checks(model, adapter_path, work, ids, base_model_name=None) -> dict:
    """Export and compare; returns a dict of measurements (see module docstring)."""
    from tdpo_mlx.export import export

    work = Path(work)
    kw = dict(dtype="float32", overwrite=True)
    export(model, None, to="hf", out=work / "base_hf", **kw)
    export(model, adapter_path, to="peft", out=work / "peft", base_model_name=base_model_name, **kw)
    export(model, adapter_path, to="hf", out=work / "fused_hf", **kw)
    ref_base = mlx_logits(model, None, ids)
    ref = mlx_logits(model, adapter_path, ids)
    res: dict = {
        "tokens": len(ids),
        "max_abs_logit": float(np.abs(ref).max()),
        "adapter_effect": float(np.abs(ref - ref_base).max()),
    }
    base = hf_model(work / "base_hf", align=False)
    unaligned = torch_logits(base, ids)
    if align_embed_scale(base):
        res["base_unaligned"] = float(np.abs(unaligned - ref_base).max())
    res["base"] = float(np.abs(torch_logits(base, ids) - ref_base).max())
    pm, missing, unexpected, tdiff = peft_model(work / "base_hf", work / "peft")
    res["peft"] = float(np.abs(torch_logits(pm, ids) - ref).max())
    res["peft_missing"], res["peft_unexpected"], res["peft_tensor_diff"] = missing, unexpected, tdiff
    res["hf"] = float(np.abs(torch_logits(hf_model(work / "fused_hf"), ids) - ref).max())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter-path", required=True)
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--work", default=None, help="directory for the exports (default: a temp dir)")
    ap.add_argument("--base-model-name", default=None)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from tdpo_mlx.export import resolve_model_dir

    ids = AutoTokenizer.from_pretrained(str(resolve_model_dir(args.model)))(args.text)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        res = run_checks(args.model, args.adapter_path, args.work or tmp, ids, args.base_model_name)
    print(json.dumps(res, indent=2))
    print(
        f"max |logit diff| vs MLX over {res['tokens']} tokens: base {res['base']:.3g}, "
        f"peft {res['peft']:.3g}, fused hf {res['hf']:.3g} (adapter changes MLX logits by {res['adapter_effect']:.3g})"
    )
    ok = res["peft"] <= args.tol and res["hf"] <= args.tol and not res["peft_missing"] and not res["peft_unexpected"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
