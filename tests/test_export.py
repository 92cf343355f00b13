"""Export writers without torch: PEFT key names/shapes/config, fused HF and MLX directories,
sharding, model cards, atomic writes, Hub upload through a local stand-in, the CLI."""

import json
import warnings
from pathlib import Path

import huggingface_hub
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model
from safetensors import safe_open
from support.models import make_adapter, make_model_dir, mlx_logits

from tdpo_mlx import atomic
from tdpo_mlx.cli import main
from tdpo_mlx.export import ExportPrecisionWarning, UnsupportedExportError, export, pipeline
from tdpo_mlx.export.files import parse_size
from tdpo_mlx.export.names import check_supported
from tdpo_mlx.export.peft import choose_targets, peft_targets

LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def _tensors(path):
    with safe_open(str(path), "np") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    model = make_model_dir(root / "base", "llama")
    lora = make_adapter(model, root / "lora", num_layers=2, rank=4, scale=2.0)
    dora = make_adapter(model, root / "dora", num_layers=3, dora=True, rank=4, scale=0.5)
    return model, lora, dora


def test_peft_keys_shapes_values_and_config(llama, tmp_path):
    model, lora, _ = llama
    res = export(model, lora, to="peft", out=tmp_path / "peft", base_model_name="org/tiny-llama")
    meta, tensors = _tensors(tmp_path / "peft" / "adapter_model.safetensors")
    assert meta == {"format": "pt"}
    _, adapter = _tensors(lora / "adapters.safetensors")
    want = set()
    for layer in (1, 2):  # the last 2 of 3 layers
        for mod in LINEARS:
            mlx_name = f"model.layers.{layer}.{mod}"
            key = f"base_model.model.{mlx_name}"
            want |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
            a, b = adapter[f"{mlx_name}.lora_a"], adapter[f"{mlx_name}.lora_b"]
            assert tensors[f"{key}.lora_A.weight"].shape == (4, a.shape[0])  # (r, in)
            assert tensors[f"{key}.lora_B.weight"].shape == (b.shape[1], 4)  # (out, r)
            np.testing.assert_array_equal(tensors[f"{key}.lora_A.weight"], a.T)
            np.testing.assert_array_equal(tensors[f"{key}.lora_B.weight"], b.T)
    assert set(tensors) == want
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0  # scale 2.0 x r 4
    assert cfg["target_modules"] == sorted(m.split(".")[-1] for m in LINEARS)
    assert cfg["layers_to_transform"] == [1, 2]
    assert (cfg["use_dora"], cfg["use_rslora"], cfg["fan_in_fan_out"], cfg["bias"]) == (False, False, False, "none")
    assert cfg["base_model_name_or_path"] == "org/tiny-llama" and cfg["lora_dropout"] == 0.0
    assert res.files == ["adapter_model.safetensors", "adapter_config.json", "README.md"]
    assert len(res.adapted_modules) == 14


def test_peft_dora_magnitude_all_layers(llama, tmp_path):
    model, _, dora = llama
    export(model, dora, to="peft", out=tmp_path / "peft")
    _, tensors = _tensors(tmp_path / "peft" / "adapter_model.safetensors")
    _, adapter = _tensors(dora / "adapters.safetensors")
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector"
    np.testing.assert_array_equal(tensors[key], adapter["model.layers.0.mlp.down_proj.m"])
    assert tensors[key].shape == (64,)
    assert sum(k.endswith("lora_magnitude_vector") for k in tensors) == 21  # 3 layers x 7 modules
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["layers_to_transform"] is None and cfg["lora_alpha"] == 2.0


def test_choose_targets_matches_peft_rules():
    cands = [f"model.layers.{i}.{m}" for i in range(3) for m in LINEARS] + ["lm_head", "model.embed_tokens"]
    adapted = ["model.layers.1.self_attn.v_proj", "model.layers.2.self_attn.q_proj"]
    targets, layers = choose_targets(adapted, cands)
    assert isinstance(targets, str) and layers is None  # no leaf/layer combination selects exactly these
    assert [c for c in cands if peft_targets(c, targets, None)] == adapted
    targets, layers = choose_targets([f"model.layers.2.{m}" for m in ("self_attn.q_proj", "self_attn.v_proj")], cands)
    assert (targets, layers) == (["q_proj", "v_proj"], [2])
    targets, layers = choose_targets(["lm_head"] + [f"model.layers.{i}.self_attn.q_proj" for i in range(3)], cands)
    assert (targets, layers) == (["lm_head", "q_proj"], None)


def test_unsupported_mappings_raise_clear_errors(llama, tmp_path):
    model, _, _ = llama
    with pytest.raises(UnsupportedExportError, match="only text models"):
        check_supported("gemma3")
    with pytest.raises(UnsupportedExportError, match="mixtral"):
        check_supported("mixtral")
    emb = make_adapter(
        model, tmp_path / "emb", num_layers=3, keys=["self_attn.q_proj", "model.embed_tokens"], dora=True
    )
    with pytest.raises(
        UnsupportedExportError, match="model.embed_tokens: DoRAEmbedding adapters on embeddings have no PEFT form"
    ):
        export(model, emb, to="peft", out=tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
    # the fused export has a safe form: equal logits to the adapter in MLX
    export(model, emb, to="mlx", out=tmp_path / "fused")
    np.testing.assert_allclose(mlx_logits(tmp_path / "fused"), mlx_logits(model, emb), atol=1e-4)
    with pytest.raises(ValueError, match="--to peft needs --adapter-path"):
        export(model, None, to="peft", out=tmp_path / "x")
    with pytest.raises(ValueError, match="--quantize applies to --to mlx"):
        export(model, emb, to="hf", out=tmp_path / "x", quantize=4)


def test_hf_export_of_quantized_base_is_fused_dequantized_hf_layout(tmp_path):
    model = make_model_dir(tmp_path / "q4", "qwen2", quantize=4)
    adapter = make_adapter(model, tmp_path / "ad", num_layers=2)
    res = export(model, adapter, to="hf", out=tmp_path / "hf")
    assert res.dtype == "float32" and res.warnings == []
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    assert (
        cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["torch_dtype"] == "float32" and cfg["dtype"] == "float32"
    )
    assert cfg["tie_word_embeddings"] is True
    meta, tensors = _tensors(tmp_path / "hf" / "model.safetensors")
    assert meta == {"format": "pt"}
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(3):
        names |= {f"model.layers.{i}.{m}.weight" for m in LINEARS}
        names |= {f"model.layers.{i}.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")}
        names |= {f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
    assert set(tensors) == names and all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["model.layers.0.mlp.up_proj.weight"].shape == (96, 64)
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "tokenizer_config.json").is_file()
    # fused in float32 from the dequantized base: the MLX fused export equals the adapter on the 4-bit base
    export(model, adapter, to="mlx", out=tmp_path / "mlx")
    ref = mlx_logits(model, adapter)
    assert np.abs(ref - mlx_logits(model)).max() > 0.1  # the adapter matters
    np.testing.assert_allclose(mlx_logits(tmp_path / "mlx"), ref, atol=1e-4)
    # round trip: mlx-lm reads the HF-layout export back (its loader takes transformers checkpoints)
    np.testing.assert_allclose(mlx_logits(tmp_path / "hf"), ref, atol=1e-4)


def test_sharded_hf_export_has_consistent_index(llama, tmp_path):
    model, lora, _ = llama
    export(model, lora, to="hf", out=tmp_path / "one")
    export(model, lora, to="hf", out=tmp_path / "many", max_shard_size="40KB")
    _, whole = _tensors(tmp_path / "one" / "model.safetensors")
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    got = {}
    for s in shards:
        meta, t = _tensors(tmp_path / "many" / s)
        assert meta == {"format": "pt"} and all(index["weight_map"][k] == s for k in t)
        got.update(t)
    assert set(got) == set(whole) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in whole.values())
    for k in whole:
        np.testing.assert_array_equal(got[k], whole[k])
    assert not (tmp_path / "many" / "model.safetensors").exists()


def test_mlx_export_requantized_loads_in_mlx_lm(llama, tmp_path):
    model, lora, _ = llama
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportPrecisionWarning)
        res = export(model, lora, to="mlx", out=tmp_path / "q8", quantize=8)
    cfg = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 8 and cfg["quantization"]["group_size"] == 64
    _, tensors = _tensors(tmp_path / "q8" / "model.safetensors")
    assert tensors["model.layers.2.self_attn.q_proj.weight"].dtype == np.uint32  # packed 8-bit
    ref = mlx_logits(model, lora)
    diff = np.abs(mlx_logits(tmp_path / "q8") - ref).max()
    assert diff < 0.05 * np.abs(ref).max()  # 8-bit rounding only
    assert res.dtype == "float32"


def test_a2_end_to_end_bf16_base(tmp_path):
    """A2(b) through the export: a bf16 base with w = 256.0 in one q_proj, update 0.5 there."""
    model = make_model_dir(tmp_path / "base", "llama")

    m, _ = load_model(model)
    weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(m.parameters())}
    w = np.array(weights["model.layers.2.self_attn.q_proj.weight"].astype(mx.float32))
    w[0, 0] = 256.0
    weights["model.layers.2.self_attn.q_proj.weight"] = mx.array(w).astype(mx.bfloat16)
    mx.save_safetensors(str(model / "model.safetensors"), weights, {"format": "mlx"})
    ad = tmp_path / "ad"
    ad.mkdir()
    a = np.zeros((64, 1), np.float32)
    a[0, 0] = 1.0
    b = np.zeros((1, 64), np.float32)
    b[0, 0] = 0.25  # scale 2.0 -> update 0.5 on w[0, 0] only
    mx.save_safetensors(
        str(ad / "adapters.safetensors"),
        {"model.layers.2.self_attn.q_proj.lora_a": mx.array(a), "model.layers.2.self_attn.q_proj.lora_b": mx.array(b)},
    )
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {
                "fine_tune_type": "lora",
                "num_layers": 1,
                "lora_parameters": {"rank": 1, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]},
            }
        )
    )

    with pytest.warns(ExportPrecisionWarning, match=r"model\.layers\.2\.self_attn\.q_proj: the bfloat16 export"):
        res = export(model, ad, to="hf", out=tmp_path / "bf16")  # default dtype: the base's (bf16)
    assert res.dtype == "bfloat16" and len(res.warnings) == 1
    assert "model.layers.2.self_attn.q_proj" in (tmp_path / "bf16" / "README.md").read_text()
    bf = mx.load(str(tmp_path / "bf16" / "model.safetensors"))["model.layers.2.self_attn.q_proj.weight"]
    assert bf.dtype == mx.bfloat16 and bf[0, 0].item() == 256.0

    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportPrecisionWarning)
        res = export(model, ad, to="hf", out=tmp_path / "fp16", dtype="float16")
    assert res.warnings == []
    assert json.loads((tmp_path / "fp16" / "config.json").read_text())["torch_dtype"] == "float16"
    fp = mx.load(str(tmp_path / "fp16" / "model.safetensors"))["model.layers.2.self_attn.q_proj.weight"]
    assert fp.dtype == mx.float16 and fp[0, 0].item() == 256.5
    probe = mx.zeros((64,)).at[0].add(1.0)  # e_0: reads column 0 of the weight
    assert (fp.astype(mx.float32) @ probe)[0].item() == 256.5
    assert (weights["model.layers.2.self_attn.q_proj.weight"].astype(mx.float32) @ probe)[0].item() == 256.0


def test_model_card_reports_training_facts(llama, tmp_path):
    model, _, _ = llama
    extra = {
        "loss": "tdpo2",
        "beta": 0.1,
        "alpha": 0.5,
        "data": "hh-rlhf harmless-base",
        "iters": 30,
        "base_model": "google/gemma-3-270m",
    }
    ad = make_adapter(model, tmp_path / "ad", num_layers=1, extra=extra)
    (ad / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 0.7, "eval_loss": 0.69})
        + "\n"
        + json.dumps({"step": 30, "loss": 0.5})
        + "\n"
        + json.dumps({"step": 30, "eval_loss": 0.61, "eval_rewards/accuracies": 0.75})
        + "\n"
    )
    for to in ("peft", "hf", "mlx"):
        export(model, ad, to=to, out=tmp_path / to)
        card = (tmp_path / to / "README.md").read_text()
        assert "base_model: google/gemma-3-270m" in card
        for text in (
            "| Method | TDPO2 |",
            "| beta | 0.1 |",
            "| alpha (TDPO) | 0.5 |",
            "| Steps | 30 |",
            "| Data | hh-rlhf harmless-base |",
            "| eval_loss | 0.61 |",
            "| eval_rewards/accuracies | 0.75 |",
        ):
            assert text in card, (to, text)
    assert "library_name: peft" in (tmp_path / "peft" / "README.md").read_text()
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "google/gemma-3-270m"


def test_push_to_hub_uses_hf_api(llama, tmp_path, monkeypatch):

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
            calls.append(("upload_folder", repo_id, repo_type, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(pipeline, "HfApi", FakeApi)
    model, lora, _ = llama
    res = export(model, lora, to="peft", out=tmp_path / "peft", push_to_hub="me/tiny-tdpo", private=True)
    assert calls == [
        ("init", None),
        ("create_repo", "me/tiny-tdpo", "model", True, True),
        ("upload_folder", "me/tiny-tdpo", "model", ["README.md", "adapter_config.json", "adapter_model.safetensors"]),
    ]
    assert res.hub_url == "https://huggingface.co/me/tiny-tdpo"


def test_writes_are_atomic(llama, tmp_path, monkeypatch):
    model, lora, _ = llama
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(model, lora, to="peft", out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "write_hf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(model, lora, to="hf", out=tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial export, no temp dirs left

    res = export(model, lora, to="peft", out=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(res.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20


def test_cli_export(llama, tmp_path, capsys):

    model, lora, _ = llama
    rc = main(
        [
            "export",
            "--model",
            str(model),
            "--adapter-path",
            str(lora),
            "--to",
            "hf",
            "--out",
            str(tmp_path / "hf"),
            "--dtype",
            "float16",
        ]
    )
    assert rc == 0
    assert "wrote hf export" in (out := capsys.readouterr().out) and "(weights float16)" in out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "float16"
    rc = main(["export", "--model", str(model), "--to", "peft", "--out", str(tmp_path / "p")])
    assert rc == 2 and "--to peft needs --adapter-path" in capsys.readouterr().err


def test_base_model_name_warnings(tmp_path):
    q4 = make_model_dir(tmp_path / "q4", "llama", quantize=4)
    ad = make_adapter(q4, tmp_path / "ad", num_layers=1, extra={"model": "gemma3-270m"})
    with pytest.warns(UserWarning, match="quantized MLX model; PEFT and transformers need an unquantized base"):
        res = export(q4, ad, to="peft", out=tmp_path / "p1")
    assert res.base_model == "gemma3-270m"
    assert "base_model:" not in (tmp_path / "p1" / "README.md").read_text()  # not a Hub id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = export(q4, ad, to="peft", out=tmp_path / "p2", base_model_name="google/gemma-3-270m")
    assert res.warnings == []
    cfg = json.loads((tmp_path / "p2" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "google/gemma-3-270m"
    assert "base_model: google/gemma-3-270m" in (tmp_path / "p2" / "README.md").read_text()


@pytest.mark.slow
def test_real_gemma_peft_export_names(gemma_dir, tmp_path):
    """PEFT export of an adapter on the real Gemma 3 270M: HF module paths and config."""
    ad = make_adapter(
        Path(gemma_dir), tmp_path / "ad", num_layers=4, rank=8, keys=["self_attn.q_proj", "self_attn.v_proj"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(gemma_dir, ad, to="peft", out=tmp_path / "peft", base_model_name="google/gemma-3-270m")
    _, tensors = _tensors(tmp_path / "peft" / "adapter_model.safetensors")
    assert len(tensors) == 4 * 2 * 2
    assert tensors["base_model.model.model.layers.17.self_attn.q_proj.lora_A.weight"].shape == (8, 640)
    assert tensors["base_model.model.model.layers.14.self_attn.v_proj.lora_B.weight"].shape == (256, 8)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["layers_to_transform"] == [14, 15, 16, 17]


def test_requantizing_a_qlora_fuse_warns_per_layer(tmp_path, capsys):
    """A small update fused into a 4-bit base and re-quantized on the same grid mostly rounds
    back to the base codes: every adapted layer is named; the float export keeps it all."""

    q4 = make_model_dir(tmp_path / "q4", "llama", quantize=4)
    ad = make_adapter(q4, tmp_path / "ad", num_layers=1)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] = 0.01
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(ExportPrecisionWarning) as rec:
        res = export(q4, ad, to="mlx", out=tmp_path / "rq", quantize=4, group_size=32)
    assert len(res.warnings) == len(rec) == 7
    assert sorted(w.split(":")[0] for w in res.warnings) == sorted(f"model.layers.2.{m}" for m in LINEARS)
    assert all("the 4-bit export keeps only" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportPrecisionWarning)
        assert export(q4, ad, to="mlx", out=tmp_path / "f32").warnings == []
    assert (
        main(
            [
                "export",
                "--model",
                str(q4),
                "--adapter-path",
                str(ad),
                "--to",
                "mlx",
                "--quantize",
                "4",
                "--q-group-size",
                "32",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert cap.err.count("warning: model.layers.2.") == 7
    # the summary reads back what was written: float tensors' dtype and the quantization
    assert "4-bit quantized, group size 32)" in cap.out and "(weights float32;" in cap.out


def test_peft_embedding_lora_keys_and_tied_error(tmp_path):
    llama = make_model_dir(tmp_path / "llama", "llama")
    ad = make_adapter(llama, tmp_path / "ad", num_layers=3, keys=["self_attn.q_proj", "model.embed_tokens"])
    export(llama, ad, to="peft", out=tmp_path / "peft")
    _, tensors = _tensors(tmp_path / "peft" / "adapter_model.safetensors")
    _, adapter = _tensors(ad / "adapters.safetensors")
    np.testing.assert_array_equal(
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"], adapter["model.embed_tokens.lora_a"].T
    )  # (r, vocab)
    assert tensors["base_model.model.model.embed_tokens.lora_embedding_B"].shape == (64, 4)  # (dims, r)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["embed_tokens", "q_proj"] and cfg["layers_to_transform"] is None
    qwen = make_model_dir(tmp_path / "qwen", "qwen2")  # tied embeddings
    ad = make_adapter(qwen, tmp_path / "ad2", num_layers=3, keys=["self_attn.q_proj", "model.embed_tokens"])
    with pytest.raises(UnsupportedExportError, match="tied embedding also changes the output head"):
        export(qwen, ad, to="peft", out=tmp_path / "p2")
