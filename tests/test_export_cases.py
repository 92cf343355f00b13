"""Cases A1 and A2 (../shared/cases/adapters-and-export.md): fusing keeps the adapter, in float32,
and the export says where its dtype or re-quantization loses the update."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters

from tdpo_mlx.export.fuse import (
    ExportPrecisionWarning,
    dtype_rounder,
    fuse_float32,
    quant_rounder,
    rounding_losses,
    warn_losses,
)


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.proj = nn.Linear(n_in, n_out, bias=False)


class Toy(nn.Module):
    """One linear layer inside ``layers`` (what mlx-lm's LoRA tooling walks)."""

    def __init__(self, n_in=4, n_out=4):
        super().__init__()
        self.layers = [Block(n_in, n_out)]

    def __call__(self, x):
        return self.layers[0].proj(x)


def _lora(model, rank, scale):
    linear_to_lora_layers(model, 1, {"rank": rank, "scale": scale, "dropout": 0.0, "keys": ["proj"]})


def _save_adapter(model, path, rank, scale):
    path.mkdir()
    adapter = {k: v for k, v in tree_flatten(model.parameters()) if k.split(".")[-1] in ("lora_a", "lora_b", "m")}
    mx.save_safetensors(str(path / "adapters.safetensors"), adapter)
    cfg = {
        "fine_tune_type": "lora",
        "num_layers": 1,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": ["proj"]},
    }
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return adapter


def test_a1_fused_equals_reloaded_adapter(tmp_path):
    model = Toy()
    model.layers[0].proj.weight = mx.eye(4)
    _lora(model, rank=2, scale=2.0)
    model.layers[0].proj.lora_a = 0.1 * mx.ones((4, 2))
    model.layers[0].proj.lora_b = 0.1 * mx.ones((2, 4))
    saved = _save_adapter(model, tmp_path / "adapter", 2, 2.0)

    reloaded = Toy()
    reloaded.layers[0].proj.weight = mx.eye(4)
    load_adapters(reloaded, str(tmp_path / "adapter"))
    for k, v in tree_flatten(reloaded.parameters()):
        if k in saved:  # reloaded tensors equal the saved ones bit for bit
            assert v.dtype == saved[k].dtype and np.array_equal(np.array(v), np.array(saved[k]))
    x = mx.array([[1.0, 0.0, 0.0, 0.0]])
    want = np.array([[1.04, 0.04, 0.04, 0.04]], np.float32)
    np.testing.assert_allclose(np.array(reloaded(x)), want, atol=1e-6)

    fuse_float32(reloaded)
    fused = reloaded.layers[0].proj
    assert type(fused) is nn.Linear and fused.weight.dtype == mx.float32
    np.testing.assert_allclose(np.array(fused.weight), np.eye(4) + 0.04, atol=1e-6)
    np.testing.assert_allclose(np.array(reloaded(x)), want, atol=1e-6)


def _bf16_256_model():
    """A2(b): one bf16 weight 256.0 and a rank-1 update of exactly 0.5 on it."""
    model = Toy(1, 1)
    model.layers[0].proj.weight = mx.array([[256.0]], mx.bfloat16)
    _lora(model, rank=1, scale=2.0)
    model.layers[0].proj.lora_a = mx.array([[1.0]])
    model.layers[0].proj.lora_b = mx.array([[0.25]])
    return model


def test_a2b_bf16_cannot_hold_update_fp16_can():
    model = _bf16_256_model()
    res = fuse_float32(model)
    fused = model.layers[0].proj.weight
    assert fused.dtype == mx.float32 and fused.item() == 256.5  # fused in fp32 first

    losses = rounding_losses(model, res, dtype_rounder(mx.bfloat16), "bfloat16")
    assert [(x.name, x.erased, x.retained) for x in losses] == [("layers.0.proj", True, 0.0)]
    with pytest.warns(ExportPrecisionWarning, match=r"layers\.0\.proj: the bfloat16 export maps the fused layer back"):
        warn_losses(losses)
    assert fused.astype(mx.bfloat16).item() == 256.0  # what bf16 would have stored

    assert rounding_losses(model, res, dtype_rounder(mx.float16), "float16") == []
    assert fused.astype(mx.float16).item() == 256.5  # fp16 holds 256.5


def _quantized_group_model(update_mask):
    """A2(a): a 4-bit group of 64 weights spanning [-1, 1] and a LoRA update of 0.01 on the
    entries where ``update_mask`` (64,) is 1."""
    model = Toy(64, 1)
    model.layers[0].proj.weight = mx.linspace(-1, 1, 64).reshape(1, 64)
    nn.quantize(model, group_size=64, bits=4)
    _lora(model, rank=1, scale=2.0)
    model.layers[0].proj.lora_a = 0.1 * mx.array(update_mask, mx.float32).reshape(64, 1)
    model.layers[0].proj.lora_b = mx.array([[0.05]])  # 2.0 * 0.1 * 0.05 = 0.01
    return model


def test_a2a_dequantized_export_holds_update():
    model = _quantized_group_model(np.ones(64))
    q = model.layers[0].proj.linear
    base = mx.dequantize(q.weight, q.scales, q.biases, group_size=64, bits=4)
    assert abs(float(q.scales.item())) > 0.13  # step of the 4-bit grid over [-1, 1]
    probe = mx.ones((1, 64))
    base_out = (probe @ base.T).item()
    res = fuse_float32(model)
    fused = model.layers[0].proj
    np.testing.assert_allclose(np.array(fused.weight), np.array(base) + 0.01, atol=1e-6)
    np.testing.assert_allclose(model(probe).item(), base_out + 0.64, atol=1e-5)  # differs from the base
    assert rounding_losses(model, res, dtype_rounder(mx.float32), "float32") == []


def test_a2a_requantization_back_to_base_codes_warns():
    w = mx.linspace(-1, 1, 64).reshape(1, 64)
    deq = np.array(mx.dequantize(*mx.quantize(w, group_size=64, bits=4), group_size=64, bits=4))[0]
    interior = (np.abs(deq) < 0.5).astype(np.float32)  # updates below half a step, edges untouched
    model = _quantized_group_model(interior)
    res = fuse_float32(model)
    assert float(mx.abs(model.layers[0].proj.weight - mx.array(deq)).max().item()) == pytest.approx(0.01, abs=1e-6)
    losses = rounding_losses(model, res, quant_rounder(64, 4), "4-bit")
    assert [(x.name, x.erased) for x in losses] == [("layers.0.proj", True)]
    assert "4-bit export maps the fused layer back to the base weights" in losses[0].message()

    # an update over the whole group moves the grid: not erased, no warning
    model = _quantized_group_model(np.ones(64))
    res = fuse_float32(model)
    assert rounding_losses(model, res, quant_rounder(64, 4), "4-bit") == []
