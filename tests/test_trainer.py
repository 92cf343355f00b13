"""Trainer: D10 through the training loss, exact accumulation, adapters-only updates, schedule,
resume (case A3), Ctrl-C, non-finite stop, mlx-lm loadable adapters."""

import json
import math
import os
import signal

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from support.models import make_model_dir
from support.pairs import random_pairs

from tdpo_mlx.data import make_batch
from tdpo_mlx.models import adapter_modules, adapters_disabled, count_trainable, load_policy
from tdpo_mlx.trainer import (
    METRIC_KEYS,
    NonFiniteLossError,
    TrainConfig,
    accumulate_gradients,
    batch_loss,
    build_schedule,
    train,
)

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny"), seed=5)


def _policy(model_dir, **kw):
    mx.random.seed(0)
    kw.setdefault("lora_keys", ["q_proj", "v_proj"])
    return load_policy(str(model_dir), **kw)


def _perturb(model, seed=1, scale=0.1):
    """Give every LoRA B factor random values so the policy differs from the reference."""
    mx.random.seed(seed)
    for _, m in adapter_modules(model):
        m.lora_b = scale * mx.random.normal(m.lora_b.shape)


# ---------------------------------------------------------------- D10 through the real loss


@pytest.mark.parametrize("loss_type", ["tdpo1", "tdpo2", "dpo"])
@pytest.mark.parametrize("average", [False, True])
def test_d10_policy_equals_reference_gives_ln2(model_dir, loss_type, average):
    model, _ = _policy(model_dir)  # lora_b = 0 at init: policy == reference
    batch = make_batch(random_pairs(6, seed=2))
    loss, sums = batch_loss(model, batch, loss_type=loss_type, beta=0.1, alpha=0.5, average_log_prob=average)
    n = batch.n_pairs
    assert abs(loss.item() - LN2) < 1e-6
    assert abs(sums["loss"].item() / n - LN2) < 1e-6
    for k in ("kl/chosen", "kl/rejected", "kl/margin", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(sums[k].item()) < 1e-5, k
    # not the "empty masks" failure: log-probs are real and negative
    assert sums["logps/chosen"].item() / n < -1.0 and sums["logps/rejected"].item() / n < -1.0


def test_d10_adapters_moved_but_reference_is_itself(model_dir):
    """A separate reference equal to the policy: KL 0, margins 0, loss ln 2, even with adapters on."""
    model, _ = _policy(model_dir)
    _perturb(model)
    batch = make_batch(random_pairs(4, seed=3))
    loss, sums = batch_loss(model, batch, loss_type="tdpo1", reference_model=model)
    assert abs(loss.item() - LN2) < 1e-6 and abs(sums["kl/chosen"].item()) < 1e-5
    # against the base it is not ln 2 and the sequential KL is positive
    loss2, sums2 = batch_loss(model, batch, loss_type="tdpo1")
    assert abs(loss2.item() - LN2) > 1e-4 and sums2["kl/chosen"].item() > 1e-4 and sums2["kl/rejected"].item() > 1e-4


def test_sft_loss_is_mean_chosen_nll(model_dir):
    model, _ = _policy(model_dir)
    batch = make_batch(random_pairs(4, seed=4))
    loss, sums = batch_loss(model, batch, loss_type="sft")
    assert abs(loss.item() + sums["logps/chosen"].item() / 4) < 1e-5


# ---------------------------------------------------------------- accumulation is exact


def _flat(grads):
    return {k: np.asarray(v) for k, v in tree_flatten(grads)}


@pytest.mark.parametrize("split", [[2, 3], [1, 1, 3], [1, 1, 1, 1, 1]])
@pytest.mark.parametrize("loss_type", ["tdpo1", "tdpo2"])
def test_accumulation_equals_one_big_batch(model_dir, split, loss_type):
    model, _ = _policy(model_dir)
    _perturb(model)  # non-zero gradients for A and B
    pairs = random_pairs(5, seed=11, max_len=7)
    kw = dict(loss_type=loss_type, beta=0.1, alpha=0.5)
    big = accumulate_gradients(model, [make_batch(pairs)], **kw)
    parts, i = [], 0
    for s in split:
        parts.append(make_batch(pairs[i : i + s]))
        i += s
    acc = accumulate_gradients(model, parts, **kw)
    gb, ga = _flat(big.grads), _flat(acc.grads)
    assert gb.keys() == ga.keys() and len(gb) == 8
    scale = max(np.abs(v).max() for v in gb.values())
    assert scale > 1e-4
    for k in gb:
        np.testing.assert_allclose(ga[k], gb[k], atol=1e-5 * max(1.0, scale), rtol=0)
    assert abs(acc.loss - big.loss) < 1e-6
    assert acc.n_pairs == big.n_pairs == 5
    for k in METRIC_KEYS:  # metrics are sums over pairs, not means of batch means
        assert abs(acc.sums[k] - big.sums[k]) < 1e-4 * max(1.0, abs(big.sums[k])), k


def test_step_changes_adapters_never_base(model_dir):
    model, _ = _policy(model_dir)
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    opt = optim.RMSprop(learning_rate=1e-2)
    for s in range(2):
        res = accumulate_gradients(model, [make_batch(random_pairs(4, seed=20 + s))], loss_type="tdpo2")
        opt.update(model, res.grads)
        mx.eval(model.parameters(), opt.state)
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    adapters = [k for k in before if k.endswith(("lora_a", "lora_b"))]
    assert len(adapters) == 8
    for k in before:
        if k in adapters:
            assert not np.array_equal(before[k], after[k]), f"adapter {k} did not move"
        else:
            assert np.array_equal(before[k], after[k]), f"base weight {k} changed"


# ---------------------------------------------------------------- schedule


def test_schedule_warmup_as_paper_then_constant_or_cosine():
    s = build_schedule(1e-3, 4, "constant", 10)
    got = [s(mx.array(i)).item() for i in range(7)]
    want = [1e-3 * min(1.0, (i + 1) / 5) for i in range(7)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    c = build_schedule(1e-3, 2, "cosine", 10)
    np.testing.assert_allclose(c(mx.array(2)).item(), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(c(mx.array(6)).item(), 1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)), rtol=1e-5)
    assert abs(c(mx.array(10)).item()) < 1e-9


# ---------------------------------------------------------------- the loop: resume (A3), Ctrl-C


def _cfg(model_dir, out, **kw):
    base = dict(
        model=str(model_dir),
        adapter_path=str(out),
        lora_rank=8,
        lora_keys=["q_proj", "v_proj"],
        lora_dropout=0.1,
        batch_size=2,
        grad_accum=2,
        iters=8,
        warmup_steps=3,
        lr=5e-3,
        lr_schedule="cosine",
        eval_every=4,
        save_every=4,
        steps_per_report=1,
        seed=7,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _adapters(path):
    return {k: np.asarray(v) for k, v in mx.load(str(path)).items()}


@pytest.fixture(scope="module")
def data():
    return random_pairs(14, seed=31), random_pairs(4, seed=32)


@pytest.fixture(scope="module")
def full_run(model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    records = []
    result = train(_cfg(model_dir, out), callback=records.append, train_pairs=data[0], eval_pairs=data[1])
    return out, records, result


def test_full_run_logs_every_metric(full_run):
    out, records, result = full_run
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 9))
    assert [r["step"] for r in eval_recs] == [0, 4, 8]
    want = set(METRIC_KEYS) | {"learning_rate", "grad_norm", "tokens_per_second", "peak_memory_gb", "step", "epoch"}
    assert want <= set(train_recs[0])
    assert {"eval_" + k for k in METRIC_KEYS} <= set(eval_recs[0])
    assert abs(eval_recs[0]["eval_loss"] - LN2) < 1e-6 and eval_recs[0]["eval_kl/chosen"] == 0.0
    # 14 pairs, 2 per micro-batch, 2 micro-batches per step: 7 batches/epoch -> step 4 = epoch 8/7
    assert abs(train_recs[3]["epoch"] - 8 / 7) < 1e-9
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == records
    assert result["step"] == 8 and result["eval_loss"] == eval_recs[-1]["eval_loss"]
    assert all(math.isfinite(r["loss"]) for r in train_recs)
    assert train_recs[0]["learning_rate"] == pytest.approx(5e-3 / 4)


def test_resume_equals_uninterrupted_run_a3(model_dir, data, full_run, tmp_path):
    out_full, rec_full, _ = full_run
    out = tmp_path / "resumed"
    first = []

    def interrupt_at_4(r):
        first.append(r)
        if r.get("step") == 4 and "loss" in r:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: finish the step, checkpoint, return

    res1 = train(_cfg(model_dir, out), callback=interrupt_at_4, train_pairs=data[0], eval_pairs=data[1])
    assert res1["interrupted"] and res1["step"] == 4
    ck = out / "checkpoints" / "step-0000004"
    ck_full = out_full / "checkpoints" / "step-0000004"
    # optimizer moments, step and learning rate, data position: identical to the uninterrupted run
    opt_a, opt_b = _adapters(ck / "optimizer.safetensors"), _adapters(ck_full / "optimizer.safetensors")
    assert opt_a.keys() == opt_b.keys() and int(opt_a["step"]) == 4
    for k in opt_a:
        np.testing.assert_array_equal(opt_a[k], opt_b[k])
    st = json.loads((ck / "trainer_state.json").read_text())
    assert st["data"] == json.loads((ck_full / "trainer_state.json").read_text())["data"]

    second = []
    model, tok = _policy(model_dir, lora_dropout=0.1)  # fresh LoRA init, overwritten by the checkpoint
    res2 = train(
        _cfg(model_dir, out, resume="latest"),
        callback=second.append,
        model=model,
        tokenizer=tok,
        train_pairs=data[0],
        eval_pairs=data[1],
    )
    assert count_trainable(model) == 4096
    with adapters_disabled(model):
        assert count_trainable(model) == 0
    assert second[0]["step"] == 5  # the step counter resumes at 5
    assert res2["step"] == 8 and not res2["interrupted"]
    a, b = _adapters(out / "adapters.safetensors"), _adapters(out_full / "adapters.safetensors")
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)
    # the whole metric history matches, learning rates (schedule position) included
    full_train = {r["step"]: r for r in rec_full if "loss" in r}
    for r in second:
        if "loss" in r:
            assert r["learning_rate"] == full_train[r["step"]]["learning_rate"]
            assert abs(r["loss"] - full_train[r["step"]]["loss"]) < 1e-6
    merged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in merged if "loss" in r] == list(range(1, 9))


def test_saved_adapters_load_in_mlx_lm_with_same_logits(model_dir, full_run):
    from mlx_lm import load

    out, _, _ = full_run
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 8
    assert cfg["tdpo"]["loss"] == "tdpo2" and cfg["tdpo"]["beta"] == 0.1 and cfg["base_model"] == str(model_dir)
    assert cfg["steps"] == 8
    from tdpo_mlx.export.card import training_info

    info = training_info(out)  # what the exporter's model card reads
    assert (info["method"], info["beta"], info["steps"], info["rank"]) == ("TDPO2", 0.1, 8, 8)
    assert info["metrics"]["step"] == 8 and "eval_kl/chosen" in info["metrics"]
    loaded, _ = load(str(model_dir), adapter_path=str(out))
    model, _ = _policy(model_dir)
    model.load_weights(str(out / "adapters.safetensors"), strict=False)
    model.eval()
    x = mx.array([[1, 5, 9, 14, 20, 2]])
    trained = model(x)
    assert mx.allclose(loaded(x), trained, atol=1e-5)
    with adapters_disabled(model):
        assert float(mx.max(mx.abs(model(x) - trained))) > 1e-4  # training did move the policy
    # every full checkpoint is itself an mlx-lm adapter directory
    loaded4, _ = load(str(model_dir), adapter_path=str(out / "checkpoints" / "step-0000004"))
    assert loaded4(x).shape == trained.shape


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(model_dir, data, tmp_path, monkeypatch):
    import tdpo_mlx.objective as O

    real = O.batch_loss
    calls = {"train": 0}

    def nan_from_step_3(model, batch, **kw):
        loss, sums = real(model, batch, **kw)
        if kw.get("total_pairs") is not None:  # training micro-batches only (2 per step)
            calls["train"] += 1
            if calls["train"] > 4:
                loss = loss * float("nan")
        return loss, sums

    monkeypatch.setattr(O, "batch_loss", nan_from_step_3)  # where accumulate_gradients calls it
    out = tmp_path / "nan"
    cfg = _cfg(model_dir, out, save_every=1, eval_every=0, lora_dropout=0.0)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3") as ei:
        train(cfg, train_pairs=data[0], eval_pairs=data[1])
    assert ei.value.checkpoint.endswith("step-0000002")
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert not (out / "checkpoints" / "step-0000003").exists()
    good = _adapters(out / "checkpoints" / "step-0000002" / "adapters.safetensors")
    top = _adapters(out / "adapters.safetensors")
    assert good.keys() == top.keys()
    for k in good:
        assert np.isfinite(good[k]).all()
        np.testing.assert_array_equal(good[k], top[k])
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2


def test_separate_reference_model_equals_adapters_off(model_dir, data, tmp_path):
    """--ref-model pointing at the same base weights gives exactly the adapters-off run."""
    kw = dict(iters=3, eval_every=0, save_every=0, lora_dropout=0.0, lr_schedule="constant")
    r1 = train(_cfg(model_dir, tmp_path / "off", **kw), train_pairs=data[0], eval_pairs=data[1])
    r2 = train(
        _cfg(model_dir, tmp_path / "sep", ref_model=str(model_dir), **kw), train_pairs=data[0], eval_pairs=data[1]
    )
    a, b = _adapters(tmp_path / "off" / "adapters.safetensors"), _adapters(tmp_path / "sep" / "adapters.safetensors")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)
    assert abs(r1["eval_kl/rejected"] - r2["eval_kl/rejected"]) < 1e-5 and r1["eval_kl/rejected"] > 1e-4
    cfg = json.loads((tmp_path / "sep" / "adapter_config.json").read_text())
    assert cfg["tdpo"]["reference"] == str(model_dir)


@pytest.mark.parametrize("dora,quantize", [(True, None), (False, 4), (True, 8)])
def test_dora_and_qlora_training_smoke(model_dir, data, tmp_path, dora, quantize):
    from mlx_lm import load

    model, tok = _policy(model_dir, dora=dora, quantize=quantize)
    base_before = {
        k: np.array(v) for k, v in tree_flatten(model.parameters()) if not k.endswith(("lora_a", "lora_b", ".m"))
    }
    out = tmp_path / "run"
    records = []
    res = train(
        _cfg(
            model_dir, out, iters=3, eval_every=0, save_every=0, lora_dropout=0.0, dora=dora, quantize=quantize, lr=1e-2
        ),
        callback=records.append,
        model=model,
        tokenizer=tok,
        train_pairs=data[0],
        eval_pairs=data[1],
    )
    first_eval = next(r for r in records if "eval_loss" in r)
    assert first_eval["step"] == 0 and abs(first_eval["eval_loss"] - LN2) < 1e-5  # adapters start as identity
    assert abs(first_eval["eval_kl/chosen"]) < 1e-5
    assert res["eval_kl/chosen"] > 1e-4 and math.isfinite(res["eval_loss"])  # the policy moved
    after = dict(tree_flatten(model.parameters()))
    for k, v in base_before.items():  # quantized codes, scales and float base all untouched
        np.testing.assert_array_equal(np.array(after[k]), v, err_msg=k)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if dora else "lora") and cfg["quantize"] == quantize
    names = set(mx.load(str(out / "adapters.safetensors")))
    assert any(n.endswith(".m") for n in names) == dora
    if quantize is None:  # the float base + saved adapters reproduce the trained policy in mlx-lm
        loaded, _ = load(str(model_dir), adapter_path=str(out))
        model.eval()
        x = mx.array([[1, 5, 9, 14, 20, 2]])
        assert mx.allclose(loaded(x), model(x), atol=1e-5)
