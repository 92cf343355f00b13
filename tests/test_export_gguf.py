"""``export --to gguf``: the fused model written as a GGUF file with the gguf package, checked by
re-importing it with our importer (tiny GGUF-imported llama, qwen2 and gemma3 models with random
LoRA adapters)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from mlx_lm.utils import load_model
from support.gguf_files import (
    byte_level_vocab,
    loaded_weights,
    random_gemma3_hf,
    random_llama_hf,
    sentencepiece_vocab,
    stored,
    write_gemma3_like,
    write_llama_like,
)
from support.models import make_adapter, make_model_dir, mlx_logits

from tdpo_mlx.cli import main
from tdpo_mlx.export import export
from tdpo_mlx.export.gguf import GGUF_FILE, tensor_type
from tdpo_mlx.export.names import UnsupportedExportError
from tdpo_mlx.gguf import import_gguf, read_gguf
from tdpo_mlx.gguf.arch import gguf_tensor_name

GEMMA_TEMPLATE = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"


def write_gemma3(path, rng):
    write_gemma3_like(path, random_gemma3_hf(rng, len(sentencepiece_vocab()[0])), GEMMA_TEMPLATE)


def make_base(tmp_path, arch: str):
    rng = np.random.default_rng(7)
    src = tmp_path / f"{arch}.gguf"
    if arch == "llama":
        write_llama_like(src, "llama", random_llama_hf(rng, len(sentencepiece_vocab()[0])), {"default": Q.F32})
    elif arch == "qwen2":
        hf = random_llama_hf(rng, len(byte_level_vocab()[0]), qkv_bias=True, tied=True)
        write_llama_like(src, "qwen2", hf, {"default": Q.F32}, tokenizer="bpe", permute=False)
    else:
        write_gemma3(src, rng)
    return import_gguf(src, tmp_path / f"{arch}-base")


IDS = {
    "llama": [1, 268, 262, 269, 270, 271, 5, 200],
    "qwen2": [5, 70, 260, 261, 9, 33],
    "gemma3": [1, 268, 262, 269, 270],
}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_gguf_export_reimports_to_the_fused_model(tmp_path, arch):
    base = make_base(tmp_path, arch)
    adapter = make_adapter(base, tmp_path / "adapter", num_layers=2)
    want = mlx_logits(base, adapter, ids=IDS[arch])
    assert np.abs(want - mlx_logits(base, None, ids=IDS[arch])).max() > 1e-2  # the adapter matters

    got_w = {}
    for gtype in ("f32", "f16", "q8_0"):
        res = export(base, adapter, to="gguf", out=tmp_path / gtype, gguf_type=gtype)
        assert res.files == [GGUF_FILE, "README.md"] and res.dtype == gtype
        g = read_gguf(tmp_path / gtype / GGUF_FILE)
        assert g.architecture == arch
        src = read_gguf(tmp_path / f"{arch}.gguf")
        for k, v in src.metadata.items():  # tokenizer (and chat template) carried over unchanged
            if k.startswith("tokenizer."):
                assert g.metadata[k] == v, k
        re = import_gguf(tmp_path / gtype / GGUF_FILE, tmp_path / f"re-{gtype}")
        got_w[gtype] = loaded_weights(re)
        logits = mlx_logits(re, None, ids=IDS[arch])
        if gtype == "f32":
            np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
        else:  # within the type's own error: each tensor is exactly what that type stores
            for name, w32 in got_w["f32"].items():
                gname = gguf_tensor_name(name, arch)
                qtype = tensor_type(gname, w32, {"f16": Q.F16, "q8_0": Q.Q8_0}[gtype])
                if arch == "gemma3" and name.endswith("norm.weight"):
                    continue  # stored as w + 1 in F32: equal up to one float32 rounding (checked by f32)
                np.testing.assert_allclose(got_w[gtype][name], stored(w32, qtype), rtol=0, atol=1e-6, err_msg=name)
            err = np.abs(logits - want).max() / np.abs(want).max()  # relative to the logits' scale
            assert err < (0.01 if gtype == "f16" else 0.1), err
    assert tensor_type("blk.0.ffn_down.weight", np.zeros((64, 96)), Q.Q8_0) == Q.Q8_0
    assert tensor_type("blk.0.ffn_down.weight", np.zeros((64, 100)), Q.Q8_0) == Q.F16
    assert tensor_type("blk.0.attn_norm.weight", np.zeros(64), Q.F16) == Q.F32


def test_gguf_export_cli_and_refusals(tmp_path, capsys):
    base = make_base(tmp_path, "qwen2")
    out = tmp_path / "cli"
    assert main(["export", "--model", str(base), "--to", "gguf", "--gguf-type", "q8_0", "--out", str(out)]) == 0
    assert "wrote gguf export" in capsys.readouterr().out
    assert read_gguf(out / GGUF_FILE).metadata["general.file_type"] == 7  # MOSTLY_Q8_0
    assert (
        main(["export", "--model", str(base), "--to", "gguf", "--dtype", "float16", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--gguf-type" in capsys.readouterr().err
    plain = make_model_dir(tmp_path / "plain", "llama")  # not imported from GGUF: no tokenizer metadata
    with pytest.raises(UnsupportedExportError, match="import-gguf"):
        export(plain, None, to="gguf", out=tmp_path / "y")
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"


def test_llama_cpp_loads_the_export_and_agrees_on_greedy_tokens(tmp_path):
    """A real llama.cpp load (llama-cpp-python) of the exported file gives MLX's greedy tokens.
    Optional: llama-cpp-python ships only a source distribution (a long C++ build), so it is not
    installed by CI; the test skips with that reason where it is absent."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (source build only)")

    base = make_base(tmp_path, "llama")
    adapter = make_adapter(base, tmp_path / "adapter", num_layers=2)
    export(base, adapter, to="gguf", out=tmp_path / "out", gguf_type="f32")
    export(base, adapter, to="mlx", out=tmp_path / "fused", dtype="float32")
    model, _ = load_model(tmp_path / "fused")
    ids = list(IDS["llama"])
    want = []
    for _ in range(6):
        nxt = int(mx.argmax(model(mx.array([ids + want]))[0, -1]).item())
        want.append(nxt)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "out" / GGUF_FILE), n_ctx=64, verbose=False)
    got = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        got.append(int(tok))
        if len(got) == len(want):
            break
    assert got == want
