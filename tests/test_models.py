"""load_policy: mlx-lm LoRA/DoRA on tiny local models, QLoRA, dtype, reference = adapters off."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear
from support.models import make_model_dir

from tdpo_mlx.backend import is_cpu_backend
from tdpo_mlx.checkpoint import save_adapters
from tdpo_mlx.models import adapter_modules, adapters_disabled, count_trainable, load_policy, resolve_lora_keys

TOKENS = mx.array([[1, 4, 9, 12, 7, 30, 2, 5]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny"), seed=3)


def _bump_lora_b(model, value=0.05):
    for _, m in adapter_modules(model):
        m.lora_b = mx.full(m.lora_b.shape, value)


def test_a3_trainable_count_and_reference(model_dir):
    # Case A3: 2 blocks, rank 8 on q_proj and v_proj (64x64): 4 x (64x8 + 8x64) = 4096.
    model, _ = load_policy(str(model_dir), lora_rank=8, lora_keys=["self_attn.q_proj", "v_proj"])
    assert count_trainable(model) == 4096
    assert model.adapter_config == {
        "fine_tune_type": "lora",
        "num_layers": -1,
        "lora_parameters": {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]},
    }
    assert len(adapter_modules(model)) == 4
    with adapters_disabled(model):
        assert count_trainable(model) == 0
        assert not adapter_modules(model)
    assert count_trainable(model) == 4096  # wrappers restored


def test_default_keys_every_linear_and_last_n_layers(model_dir):
    model, _ = load_policy(str(model_dir), lora_rank=4, lora_alpha=8, lora_layers=1)
    keys = model.adapter_config["lora_parameters"]["keys"]
    assert keys == sorted(
        [
            "mlp.down_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "self_attn.k_proj",
            "self_attn.o_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        ]
    )
    names = [n for n, _ in adapter_modules(model)]
    assert len(names) == 7 and all(n.startswith("model.layers.1.") for n in names)
    # rank 4: q,k,v,o 64x64 -> 4*(64*4+4*64)=2048; gate/up 64->128: 2*(64*4+4*128)=1536; down 128->64: 768
    assert count_trainable(model) == 2048 + 1536 + 768
    assert model.adapter_config["lora_parameters"]["scale"] == 2.0


def test_lora_scale_overrides_alpha_and_bad_key(model_dir):
    model, _ = load_policy(str(model_dir), lora_rank=8, lora_alpha=16, lora_scale=5.0, lora_keys="q_proj")
    assert all(m.scale == 5.0 for _, m in adapter_modules(model))
    with pytest.raises(ValueError, match="qproj.*available: mlp.down_proj"):
        resolve_lora_keys(model, ["qproj"])
    with pytest.raises(ValueError, match="lora_layers"):
        load_policy(str(model_dir), lora_layers=3)


def test_adapters_off_is_the_base_model(model_dir):

    base, _ = load(str(model_dir))
    model, _ = load_policy(str(model_dir), lora_keys=["q_proj", "v_proj", "down_proj"])
    ref = base(TOKENS)
    assert mx.allclose(model(TOKENS), ref, atol=1e-5)  # lora_b = 0 at init
    _bump_lora_b(model)
    moved = model(TOKENS)
    assert float(mx.max(mx.abs(moved - ref))) > 1e-2
    with adapters_disabled(model):
        assert mx.array_equal(model(TOKENS), ref)


def test_default_dtype_float32_on_cpu(tmp_path):

    d = make_model_dir(tmp_path / "bf16", seed=1)
    w = mx.load(str(d / "model.safetensors"))
    mx.save_safetensors(str(d / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in w.items()})
    model, _ = load_policy(str(d))
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    if is_cpu_backend():
        assert dtypes == {mx.float32}
    model16, _ = load_policy(str(d), dtype="bfloat16")
    base_dtypes = {v.dtype for k, v in tree_flatten(model16.parameters()) if "lora" not in k}
    assert base_dtypes == {mx.bfloat16}


def test_qlora_quantizes_base_within_one_step(model_dir):
    w = mx.load(str(model_dir / "model.safetensors"))
    model, _ = load_policy(str(model_dir), quantize=4, lora_keys=["q_proj", "v_proj"])
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.linear, nn.QuantizedLinear) and q.linear.bits == 4
    assert isinstance(model.model.layers[0].mlp.up_proj, nn.QuantizedLinear)  # whole base quantized
    assert count_trainable(model) == 4096
    deq = mx.dequantize(q.linear.weight, q.linear.scales, q.linear.biases, group_size=64, bits=4)
    orig = w["model.layers.0.self_attn.q_proj.weight"]
    g = np.asarray(orig).reshape(-1, 64)
    step = (g.max(1) - g.min(1)) / 15.0  # 4-bit affine step per group of 64
    err = np.abs(np.asarray(deq).reshape(-1, 64) - g).max(1)
    # MLX shifts the affine grid so that 0 is exact: the bound is one step, not half
    assert (err <= step + 1e-6).all() and err.max() > 0
    assert np.abs(np.asarray(deq) - np.asarray(orig)).mean() < 0.3 * step.mean()
    # the quantized policy is close to (not equal to) the float base

    base, _ = load(str(model_dir))
    lf, lq = np.asarray(base(TOKENS)), np.asarray(model(TOKENS))
    assert np.corrcoef(lf.ravel(), lq.ravel())[0, 1] > 0.95 and not np.allclose(lf, lq)


def test_quantized_base_on_cpu_warns_that_it_is_slow(model_dir, caplog):
    with caplog.at_level("WARNING", logger="tdpo_mlx.models"):
        load_policy(str(model_dir))
        assert not [r for r in caplog.records if "quantized matmuls" in r.getMessage()]
        load_policy(str(model_dir), quantize=4)
    hits = [r for r in caplog.records if "quantized matmuls" in r.getMessage()]
    assert len(hits) == (1 if is_cpu_backend() else 0)


def test_dora_magnitude_starts_at_row_norms(model_dir):
    model, _ = load_policy(str(model_dir), dora=True, lora_keys=["q_proj", "v_proj"])
    assert model.adapter_config["fine_tune_type"] == "dora"
    q = model.model.layers[1].self_attn.q_proj
    assert isinstance(q, DoRALinear)
    w = mx.load(str(model_dir / "model.safetensors"))["model.layers.1.self_attn.q_proj.weight"]
    assert np.allclose(np.asarray(q.m), np.linalg.norm(np.asarray(w), axis=1), rtol=1e-5)
    # 4 modules x (64*8 + 8*64 + 64 magnitudes)
    assert count_trainable(model) == 4 * (1024 + 64)
    with adapters_disabled(model):
        ref = model(TOKENS)
    assert mx.allclose(model(TOKENS), ref, atol=1e-4)  # B = 0: DoRA equals the base
    _bump_lora_b(model)
    assert float(mx.max(mx.abs(model(TOKENS) - ref))) > 1e-2


def test_adapter_config_json_roundtrip(model_dir, tmp_path):
    """The adapter config load_policy returns is what mlx-lm's loader needs."""

    model, _ = load_policy(str(model_dir), lora_keys=["q_proj", "v_proj"], lora_layers=1)
    _bump_lora_b(model, 0.03)
    save_adapters(tmp_path, model, model.adapter_config)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["num_layers"] == 1 and cfg["lora_parameters"]["rank"] == 8
    loaded, _ = load(str(model_dir), adapter_path=str(tmp_path))
    model.eval()
    assert mx.allclose(loaded(TOKENS), model(TOKENS), atol=1e-5)


def test_load_policy_with_adapter_path(model_dir, tmp_path):

    model, _ = load_policy(str(model_dir), lora_keys=["q_proj", "v_proj"], lora_rank=4, dora=True)
    _bump_lora_b(model, 0.02)
    save_adapters(tmp_path, model, model.adapter_config)
    again, _ = load_policy(str(model_dir), adapter_path=str(tmp_path), lora_rank=16)  # lora_* ignored
    assert again.adapter_config == model.adapter_config
    assert count_trainable(again) == count_trainable(model) == 4 * (64 * 4 + 4 * 64 + 64)
    model.eval(), again.eval()
    assert mx.allclose(again(TOKENS), model(TOKENS), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_policy(str(model_dir), adapter_path=str(tmp_path / "nope"))
