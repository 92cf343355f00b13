"""Interoperability: exports really load in PEFT and transformers with equal logits (float32).

For tiny random llama, qwen2 (biases, tied embeddings) and gemma3_text (1 + w norms, scaled
embeddings, sliding/global layers) models built locally: MLX logits with the adapter equal the
PEFT-loaded adapter's within 1e-4 with no missing or unexpected keys, for LoRA on the last 2 of 3
layers and DoRA on all; the fused ``--to hf`` model in transformers equals MLX within 1e-4.
Needs the interop extra (torch, peft); skipped without it.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from support.models import TEXT_IDS, make_adapter, make_model_dir  # noqa: E402

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_export", ROOT / "scripts" / "check_export.py")
check_export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_export)

TOL = 1e-4

CASES = [
    ("llama", "lora_last2", {}),
    ("llama", "dora_all", {}),
    ("qwen2", "lora_last2", {}),
    ("qwen2", "dora_all", {}),
    ("gemma3_text", "lora_last2", {}),
    ("gemma3_text", "dora_all", {}),
    ("llama", "lora_last2", {"quantize": 4}),  # QLoRA: adapter trained on a 4-bit base
]


@pytest.mark.parametrize("arch,kind,opts", CASES, ids=[f"{a}-{k}{'-q4' if o else ''}" for a, k, o in CASES])
def test_peft_and_fused_hf_logits_equal_mlx(arch, kind, opts, tmp_path):
    model = make_model_dir(tmp_path / "base", arch, **opts)
    if kind == "lora_last2":
        adapter = make_adapter(model, tmp_path / "ad", num_layers=2, rank=4, scale=2.0)
    else:
        adapter = make_adapter(model, tmp_path / "ad", num_layers=3, dora=True, rank=4, scale=1.5)
    res = check_export.run_checks(model, adapter, tmp_path / "work", TEXT_IDS)
    assert res["adapter_effect"] > 0.5  # the adapter changes the logits: equality below is not vacuous
    assert res["peft_missing"] == [] and res["peft_unexpected"] == []
    assert res["peft_tensor_diff"] == 0.0  # PEFT holds exactly the exported tensors
    assert res["base"] < TOL, res
    assert res["peft"] < TOL, res
    assert res["hf"] < TOL, res


def test_bf16_hf_export_loads_as_bf16_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tdpo_mlx.export import export

    model = make_model_dir(tmp_path / "base", "llama")
    adapter = make_adapter(model, tmp_path / "ad", num_layers=2)
    export(model, adapter, to="hf", out=tmp_path / "hf", dtype="bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype="auto").eval()
    assert hf.dtype == torch.bfloat16 and hf.model.layers[2].self_attn.q_proj.weight.dtype == torch.bfloat16
    ref = check_export.mlx_logits(model, adapter, TEXT_IDS)
    got = check_export.torch_logits(hf, TEXT_IDS)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # bf16 weights and compute


def test_peft_embedding_lora_untied_llama(tmp_path):
    model = make_model_dir(tmp_path / "base", "llama")  # untied embeddings
    adapter = make_adapter(model, tmp_path / "ad", num_layers=3, keys=["self_attn.q_proj", "model.embed_tokens"])
    res = check_export.run_checks(model, adapter, tmp_path / "work", TEXT_IDS)
    assert res["adapter_effect"] > 0.5
    assert res["peft_missing"] == [] and res["peft_unexpected"] == [] and res["peft_tensor_diff"] == 0.0
    assert res["peft"] < TOL and res["hf"] < TOL, res
