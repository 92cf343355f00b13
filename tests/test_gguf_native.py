"""``quantize="gguf"`` (import-gguf --quantize gguf): Q4_0/Q4_1/Q8_0 GGUF blocks kept as MLX
affine-quantized layers without dequantizing, llama's Q/K permutation undone on the quantized
rows, other quantized types re-quantized by MLX with a warning; QLoRA adapters on top export."""

from __future__ import annotations

import json
import warnings

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from support.gguf_files import random_llama_hf, sentencepiece_vocab, write_llama_like
from support.models import make_adapter, mlx_logits

from tdpo_mlx.export import export
from tdpo_mlx.gguf import import_gguf, read_gguf
from tdpo_mlx.gguf.importer import RequantizedWarning

IDS = [1, 268, 262, 269, 270, 271, 5, 200, 17]
NATIVE = {"attn_": Q.Q4_0, "mlp": Q.Q8_0, "embed": Q.Q4_1, "default": Q.Q4_1}


def write_native(tmp_path, types=NATIVE, tied=False):
    rng = np.random.default_rng(5)
    src = tmp_path / "native.gguf"
    hf = random_llama_hf(rng, len(sentencepiece_vocab()[0]), tied=tied)
    write_llama_like(src, "llama", hf, {("self_attn" if k == "attn_" else k): v for k, v in types.items()})
    return src


def test_blocks_repacked_exactly_as_mx_load(tmp_path):
    src = write_native(tmp_path)
    g, ref = read_gguf(src), mx.load(str(src))
    seen = set()
    for name, t in g.tensors.items():
        got = g.quantized(name)
        if t.tensor_type not in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
            assert got is None
            continue
        w, scales, biases, bits = got
        seen.add(t.tensor_type)
        base = name[: -len(".weight")]
        np.testing.assert_array_equal(w, np.array(ref[name]))
        np.testing.assert_array_equal(scales, np.array(ref[base + ".scales"]))
        np.testing.assert_array_equal(biases, np.array(ref[base + ".biases"]))
        assert bits == (8 if t.tensor_type == Q.Q8_0 else 4)
        deq = mx.dequantize(mx.array(w), mx.array(scales, mx.float32), mx.array(biases, mx.float32), 32, bits)
        np.testing.assert_allclose(np.array(deq), g.tensor(name), rtol=0, atol=1e-6)
    assert seen == {Q.Q4_0, Q.Q4_1, Q.Q8_0}


def test_native_import_equals_dequantized_model(tmp_path):
    src = write_native(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RequantizedWarning)  # nothing re-quantized in an all-native file
        native = import_gguf(src, tmp_path / "native", quantize="gguf")
    plain = import_gguf(src, tmp_path / "plain")
    cfg = json.loads((native / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    w = mx.load(str(native / "model.safetensors"))
    assert w["model.layers.0.self_attn.q_proj.weight"].dtype == mx.uint32
    assert w["model.layers.0.mlp.up_proj.weight"].shape == (96, 64 * 8 // 32)  # Q8_0 -> 8 bits
    assert w["model.embed_tokens.weight"].shape[-1] == 64 * 4 // 32  # Q4_1 -> 4 bits
    # same function: the quantized layers hold exactly the GGUF values (Q/K rows un-permuted)
    np.testing.assert_allclose(mlx_logits(native, ids=IDS), mlx_logits(plain, ids=IDS), rtol=1e-5, atol=1e-4)


def test_other_types_requantized_with_a_warning(tmp_path):
    src = write_native(tmp_path, types={"attn_": Q.Q4_0, "mlp": Q.Q5_0, "default": Q.F16})
    with pytest.warns(RequantizedWarning, match=r"Q5_0 -> MLX 8-bit: 6 tensors \(blk\.0\.ffn_"):
        native = import_gguf(src, tmp_path / "native", quantize="gguf")
    plain = import_gguf(src, tmp_path / "plain")
    w = mx.load(str(native / "model.safetensors"))
    assert w["model.embed_tokens.weight"].dtype == mx.float32  # F16 stays float (not quantized)
    assert w["model.layers.1.mlp.down_proj.weight"].dtype == mx.uint32
    want, got = mlx_logits(plain, ids=IDS), mlx_logits(native, ids=IDS)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # 8-bit re-quantization of the MLP only


def test_qlora_on_native_base_exports_peft_and_fused_hf(tmp_path):
    native = import_gguf(write_native(tmp_path), tmp_path / "native", quantize="gguf")
    adapter = make_adapter(native, tmp_path / "adapter", num_layers=2)
    want = mlx_logits(native, adapter, ids=IDS)
    assert np.abs(want - mlx_logits(native, ids=IDS)).max() > 1e-2
    export(native, adapter, to="peft", out=tmp_path / "peft", base_model_name="org/base")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    export(native, adapter, to="hf", out=tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization" not in hf_cfg
    np.testing.assert_allclose(mlx_logits(tmp_path / "hf", ids=IDS), want, rtol=1e-4, atol=1e-4)
    export(native, adapter, to="gguf", out=tmp_path / "gguf", gguf_type="f32")
    back = import_gguf(tmp_path / "gguf" / "model.gguf", tmp_path / "back")
    np.testing.assert_allclose(mlx_logits(back, ids=IDS), want, rtol=1e-4, atol=1e-4)
