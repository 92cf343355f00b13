"""Evaluation: KL/entropy on hand cases and tiny models, win rate, distinct-n, reward loader,
batched generation consistent with teacher forcing, the generate/eval CLIs."""

import json
import math

import mlx.core as mx
import numpy as np
import pytest
from support.models import make_review_model_dir

import tdpo_mlx  # noqa: F401  (fast BLAS before mlx)
from tdpo_mlx import evaluation as ev
from tdpo_mlx import generation as gen
from tdpo_mlx import rewards


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_review_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny(tiny_dir):
    import mlx_lm

    return mlx_lm.load(str(tiny_dir))


def attach_lora(model, rank=4, seed=1, perturb=0.0):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": rank, "scale": 2.0, "dropout": 0.0})
    if perturb:
        from tdpo_mlx.models import adapter_modules

        mx.random.seed(seed)
        for _, m in adapter_modules(model):
            m.lora_b = perturb * mx.random.normal(m.lora_b.shape)
    return model


# ---------------------------------------------------------------- hand cases


def test_uniform_entropy_is_log_v_and_identical_kl_zero():
    for v in (2, 7, 1000, 262145, 262144):
        logits = mx.zeros((1, 3, v))
        kl, ent = ev.token_kl_entropy(logits, logits + 5.0)  # a constant shift: same distribution
        np.testing.assert_allclose(np.array(ent), math.log(v), rtol=1e-5)
        np.testing.assert_allclose(np.array(kl), 0.0, atol=1e-5)


def test_token_kl_matches_numpy():
    rng = np.random.default_rng(0)
    p_log = rng.normal(size=(2, 5, 11)) * 2
    q_log = rng.normal(size=(2, 5, 11)) * 2

    def ls(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = ls(p_log), ls(q_log)
    want_kl = (np.exp(lp) * (lp - lq)).sum(-1)  # KL(p || q): policy first
    want_h = -(np.exp(lp) * lp).sum(-1)
    kl, h = ev.token_kl_entropy(mx.array(p_log, dtype=mx.float32), mx.array(q_log, dtype=mx.float32))
    np.testing.assert_allclose(np.array(kl), want_kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(h), want_h, rtol=1e-4, atol=1e-5)
    # the direction matters: KL(q || p) is a different number here
    assert abs(float(np.sum(want_kl)) - float((np.exp(lq) * (lq - lp)).sum())) > 1e-2


def test_two_point_kl_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3)
    p = mx.log(mx.array([[0.5, 0.5]]))
    q = mx.log(mx.array([[0.25, 0.75]]))
    kl, h = ev.token_kl_entropy(p, q)
    assert float(kl[0]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert float(h[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_win_rate_ties_half():
    assert ev.win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert ev.win_rate([0.5], [0.5]) == 0.5
    assert ev.win_rate([1, 1, 1], [0, 0, 0]) == 1.0
    assert ev.win_rate([-1, -1], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        ev.win_rate([1, 2], [1])
    with pytest.raises(ValueError):
        ev.win_rate([], [])


def test_distinct_n_by_hand():
    texts = ["the cat the cat", "The dog"]
    # unigrams: the, cat, the, cat, the, dog -> 6 total, 3 unique
    assert ev.distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 4 total, 3 unique
    assert ev.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert ev.distinct_n(["one"], 2) == 0.0
    with pytest.raises(ValueError):
        ev.distinct_n(texts, 0)


# ---------------------------------------------------------------- reward loader


def test_sentiment_reward_orders_reviews():
    fn = rewards.load_reward("sentiment")
    r = fn(["The film was ", "The film was "], ["wonderful and moving, I loved it.", "awful, boring and bad."])
    assert r[0] > 0.5 and r[1] < -0.5


def test_reward_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(rewards.RewardSpecError, match="module:function"):
        rewards.load_reward("no_colon_here")
    with pytest.raises(rewards.RewardSpecError, match="cannot import module 'no_such_module_xyz'"):
        rewards.load_reward("no_such_module_xyz:score")
    with pytest.raises(rewards.RewardSpecError, match="has no attribute 'nope'"):
        rewards.load_reward("math:nope")
    with pytest.raises(rewards.RewardSpecError, match="not a function"):
        rewards.load_reward("math:pi")
    with pytest.raises(rewards.RewardSpecError, match="both the module and the function"):
        rewards.load_reward("math:")
    with pytest.raises(rewards.RewardSpecError, match="not found"):
        rewards.load_reward(str(tmp_path / "missing.py") + ":f")


def test_reward_loader_user_module_and_output_checks(tmp_path, monkeypatch):
    (tmp_path / "my_rw.py").write_text(
        "def length(prompts, completions):\n    return [len(c) for c in completions]\n"
        "def short(prompts, completions):\n    return [1.0]\n"
        "def nan(prompts, completions):\n    return [float('nan')] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rewards.load_reward("my_rw:length")(["a", "b"], ["xyz", ""]) == [3.0, 0.0]
    assert rewards.load_reward(str(tmp_path / "my_rw.py") + ":length")(["a"], ["xy"]) == [2.0]
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        rewards.load_reward("my_rw:short")(["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="non-finite"):
        rewards.load_reward("my_rw:nan")(["a"], ["x"])


# ---------------------------------------------------------------- tiny models


def test_kl_of_identical_models_is_zero(tiny):
    model, tok = tiny
    attach_lora(model)  # lora_b starts at zero: policy == reference
    samples = gen.generate_samples(
        model, tok, ["I went into this film", "the plot"], samples_per_prompt=2, max_tokens=6, seed=3, progress=False
    )
    st = ev.sample_statistics(model, samples, batch_size=3, progress=False)
    np.testing.assert_allclose(st["kl"], 0.0, atol=1e-5)
    assert (st["n_tokens"] == [len(s.completion_ids) for s in samples]).all()
    assert (st["entropy_sum"] > 0).all()


def test_sequence_kl_matches_full_logits_reference(tiny):
    """Sequence KL/entropy against a per-sample, unpadded, full-logits computation in NumPy."""
    from tdpo_mlx.models import adapters_disabled

    model, tok = tiny
    attach_lora(model, perturb=0.5)
    samples = gen.generate_samples(
        model,
        tok,
        ["I went into this film expecting", "the plot"],
        samples_per_prompt=3,
        max_tokens=7,
        seed=1,
        progress=False,
    )
    st = ev.sample_statistics(model, samples, batch_size=4, pad_id=0, progress=False)
    assert (st["kl"] > 1e-4).all()
    for i, s in enumerate(samples):
        x = mx.array([s.prompt_ids + s.completion_ids])
        p = np.array(model(x)[0], dtype=np.float64)
        with adapters_disabled(model):
            q = np.array(model(x)[0], dtype=np.float64)
        p0 = len(s.prompt_ids) - 1
        p = p[p0 : p0 + len(s.completion_ids)]
        q = q[p0 : p0 + len(s.completion_ids)]
        lp = p - np.log(np.exp(p - p.max(-1, keepdims=True)).sum(-1, keepdims=True)) - p.max(-1, keepdims=True)
        lq = q - np.log(np.exp(q - q.max(-1, keepdims=True)).sum(-1, keepdims=True)) - q.max(-1, keepdims=True)
        assert st["kl"][i] == pytest.approx((np.exp(lp) * (lp - lq)).sum(), rel=1e-3, abs=1e-5)
        assert st["entropy_sum"][i] == pytest.approx(-(np.exp(lp) * lp).sum(), rel=1e-4)


def test_greedy_batched_generation_matches_teacher_forcing(tiny):
    """temp=0: each generated token is the argmax of the model's logits on prompt + prefix,
    for prompts of different lengths decoded in one batch (checks padding and alignment)."""
    model, tok = tiny
    prompts = ["I went into this film expecting a great", "the", "this movie is a good story"]
    samples = gen.generate_samples(model, tok, prompts, max_tokens=5, temp=0.0, batch_size=3, progress=False)
    assert [s.prompt_index for s in samples] == [0, 1, 2]
    for s in samples:
        assert s.prompt_ids[0] == 2 and 1 <= len(s.completion_ids) <= 5
        logits = np.array(model(mx.array([s.prompt_ids + s.completion_ids]))[0])
        p0 = len(s.prompt_ids) - 1
        want = logits[p0 : p0 + len(s.completion_ids)].argmax(-1).tolist()
        assert s.completion_ids == want
        assert s.finished == (s.completion_ids[-1] == 1)


def test_generation_is_seeded(tiny):
    model, tok = tiny
    a = gen.generate_samples(model, tok, ["the film"], samples_per_prompt=3, max_tokens=6, seed=7, progress=False)
    b = gen.generate_samples(model, tok, ["the film"], samples_per_prompt=3, max_tokens=6, seed=7, progress=False)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert json.loads(json.dumps(a[0].to_json())) == a[0].to_json()
    assert gen.Sample.from_json(a[0].to_json()) == a[0]


def test_evaluate_rows(tiny):
    model, tok = tiny
    attach_lora(model, perturb=0.3)
    length = lambda p, c: [float(len(x)) for x in c]  # noqa: E731
    res = ev.evaluate(
        model, tok, ["the film", "I went"], length, name="pol", samples_per_prompt=2, max_tokens=5, progress=False
    )
    assert res.reference["seq_kl_mean"] == 0.0 and res.reference["win_rate_vs_reference"] == 0.5
    assert res.policy["seq_kl_mean"] > 0
    assert res.policy["reward_mean"] == pytest.approx(np.mean(res.policy_rewards))
    assert res.policy["win_rate_vs_reference"] == pytest.approx(ev.win_rate(res.policy_rewards, res.reference_rewards))
    assert res.policy["kl_direction"].startswith("KL(pi_theta || pi_ref)")
    table = ev.markdown_table([res.reference, res.policy])
    assert table.count("\n") == 3 and "| pol |" in table


# ---------------------------------------------------------------- CLI


def test_generate_and_eval_cli(tiny_dir, tmp_path, capsys):
    from tdpo_mlx.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the film\n\nI went into this film\n")
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_dir),
                "--prompt-file",
                str(prompts),
                "--max-tokens",
                "4",
                "--seed",
                "1",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == ["the film", "I went into this film"]

    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_dir),
                "--prompts",
                str(prompts),
                "--reward",
                "sentiment",
                "--samples-per-prompt",
                "2",
                "--max-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "eval.json").read_text())
    assert res["kl_direction"].startswith("KL(pi_theta || pi_ref)")
    assert [r["name"] for r in res["rows"]] == ["reference", "policy"]
    assert res["rows"][1]["seq_kl_mean"] == pytest.approx(0.0, abs=1e-5)  # no adapters: policy == reference
    assert (out / "eval.md").read_text().startswith("# Evaluation")
    assert len((out / "samples.jsonl").read_text().splitlines()) == 8


def test_load_model_with_trained_adapters_round_trip(tiny_dir, tmp_path):
    """Adapters saved the way the trainer saves them load back into identical logits, and the
    eval CLI then measures a positive KL; foreign tensors are refused."""
    from tdpo_mlx.checkpoint import load_adapter_weights, save_adapters
    from tdpo_mlx.cli import main
    from tdpo_mlx.models import adapter_modules, load_policy

    model, tok = load_policy(str(tiny_dir), lora_rank=4, lora_alpha=8.0)
    mx.random.seed(5)
    for _, m in adapter_modules(model):
        m.lora_b = 0.5 * mx.random.normal(m.lora_b.shape)
    model.eval()
    ad = tmp_path / "adapters"
    save_adapters(ad, model, model.adapter_config)
    x = mx.array([tok.encode("I went into this film expecting")])
    want = np.array(model(x))

    loaded, _ = ev.load_model(str(tiny_dir), ad)
    np.testing.assert_allclose(np.array(loaded(x)), want, rtol=1e-5, atol=1e-5)

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the film"}) + "\n" + json.dumps({"prompt": "I went"}) + "\n")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_dir),
                "--adapter-path",
                str(ad),
                "--prompts",
                str(prompts),
                "--samples-per-prompt",
                "2",
                "--max-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert rows[1]["name"] == "adapters" and rows[1]["seq_kl_mean"] > 0

    mx.save_safetensors(str(tmp_path / "bad.safetensors"), {"model.layers.0.nope.lora_a": mx.zeros((2, 2))})
    with pytest.raises(ValueError, match="nope.lora_a: not an adapter of this model"):
        load_adapter_weights(loaded, tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ev.load_model(str(tiny_dir), tmp_path)


def test_read_prompts_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected an object with a string 'prompt'"):
        gen.read_prompts(f)
    g = tmp_path / "empty.txt"
    g.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        gen.read_prompts(g)


@pytest.mark.slow
def test_real_gemma_sampling_and_scoring(gemma_dir):
    """Gemma 3 270M: greedy batched samples agree with teacher forcing, KL to itself is 0 and the
    entropy is a plausible per-token value (between 0 and ln V)."""
    from tdpo_mlx.models import load_policy

    model, tok = load_policy(gemma_dir, lora_rank=2)
    model.eval()
    prompts = ["I went into this film expecting", "The soundtrack is mostly piano, and"]
    samples = gen.generate_samples(model, tok, prompts, max_tokens=4, temp=0.0, batch_size=2, progress=False)
    for s in samples:
        logits = np.array(model(mx.array([s.prompt_ids + s.completion_ids]))[0])
        p0 = len(s.prompt_ids) - 1
        rows = logits[p0 : p0 + len(s.completion_ids)]
        picked = rows[np.arange(len(rows)), s.completion_ids]
        np.testing.assert_array_less(rows.max(-1) - picked, 1e-3)  # the argmax, up to float ties
    st = ev.sample_statistics(model, samples, progress=False)
    np.testing.assert_allclose(st["kl"], 0.0, atol=1e-4)
    h = st["entropy_sum"].sum() / st["n_tokens"].sum()
    assert 0.0 < h < math.log(262144)
