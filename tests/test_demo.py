"""Demo: openers, prompt split, pair building on fake rewards, report/plots on fake metrics,
and a tiny end-to-end run (tiny local model) that also resumes."""

import dataclasses
import json
import pathlib

import pytest
from support.models import make_review_model_dir
from transformers import AutoTokenizer

import tdpo_mlx  # noqa: F401
from tdpo_mlx.demo import config, curves, hh, plots, report, table1
from tdpo_mlx.demo import run as demo
from tdpo_mlx.demo.pairs import build_pairs, load_openers, split_prompts
from tdpo_mlx.generation import Sample
from tdpo_mlx.rewards import sentiment_reward


def _s(p, k, text, ids):
    return Sample(p, k, f"prompt{p}", text, [2, 10 + p], ids, True)


def test_openers_are_many_distinct_and_neutral():

    ops = load_openers()
    assert len(ops) >= 300 and len(set(ops)) == len(ops)
    r = sentiment_reward(ops, [""] * len(ops))
    assert max(abs(x) for x in r) <= 0.05  # sentiment is decided by the continuation


def test_split_prompts_disjoint_and_seeded():
    ps = [f"p{i}" for i in range(20)]
    tr, ev = split_prompts(ps, 12, 5, seed=3)
    assert len(tr) == 12 and len(ev) == 5 and not set(tr) & set(ev)
    assert (tr, ev) == split_prompts(ps, 12, 5, seed=3)
    assert tr != split_prompts(ps, 12, 5, seed=4)[0]
    with pytest.raises(ValueError, match="only 20"):
        split_prompts(ps, 18, 5, seed=0)


def test_build_pairs_best_vs_worst_skips_near_ties():
    samples = [
        _s(0, 0, "ok", [5, 1]),
        _s(0, 1, "great", [6, 1]),
        _s(0, 2, "bad", [7, 1]),  # gap 1.5 -> pair
        _s(1, 0, "meh", [8, 1]),
        _s(1, 1, "fine", [9, 1]),  # gap 0.05 -> near tie
        _s(2, 0, "same", [4, 1]),
        _s(2, 1, "same", [4, 1]),  # identical ids
        _s(3, 0, "a", [3]),
        _s(3, 1, "b", [3, 3]),
        _s(3, 2, "c", [3, 3, 3]),  # ties for best: first wins
    ]
    rewards = [0.1, 0.9, -0.6, 0.30, 0.35, -1.0, 1.0, 0.5, 0.5, -0.5]
    pairs, summ = build_pairs(samples, rewards, min_gap=0.1)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("prompt0", "great", "bad"),
        ("prompt3", "a", "c"),
    ]
    assert pairs[0]["chosen_ids"] == [6, 1] and pairs[0]["rejected_ids"] == [7, 1]
    assert pairs[0]["prompt_ids"] == [2, 10]
    assert pairs[0]["chosen_reward"] == 0.9 and pairs[0]["rejected_reward"] == -0.6
    assert summ["pairs"] == 2 and summ["prompts"] == 4
    assert summ["skipped_near_tie"] == 1 and summ["skipped_identical"] == 1
    assert summ["chosen_reward_mean"] == pytest.approx((0.9 + 0.5) / 2)
    assert summ["rejected_reward_mean"] == pytest.approx((-0.6 - 0.5) / 2)
    with pytest.raises(ValueError):
        build_pairs(samples, rewards[:-1], 0.1)


def _png_ok(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # written, as a PNG (the drawing: test_plots_draw_...)


def _rec(rewards, kls, prompts):
    return {"rewards": rewards, "kl": kls, "prompt_index": prompts}


def test_frontier_averages_prompts_then_seeds_with_standard_errors():
    # 2 prompts x 2 samples; the reference: prompt means 0.0 and 1.0
    ref = _rec([0.0, 0.0, 1.0, 1.0], [0.0] * 4, [0, 0, 1, 1])
    points = {
        "reference": ref,
        ("dpo", 0, 5): _rec([1.0, 3.0, 2.0, 2.0], [1.0, 1.0, 4.0, 2.0], [0, 0, 1, 1]),  # prompt means 2, 2; kl 1, 3
        ("dpo", 1, 5): _rec([0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 3.0, 3.0], [0, 0, 1, 1]),  # prompt means 0, 4; kl 3, 3
        ("dpo", 0, 10): _rec([1.0, 1.0, 1.0, 1.0], [5.0] * 4, [0, 0, 1, 1]),  # seed 1 missing at step 10
    }
    f = curves.frontier(points, ["dpo", "tdpo1"], seeds=[0, 1], steps=[5, 10])
    assert f["tdpo1"] == [f["tdpo1"][0]]  # only the reference point
    r0, r5, r10 = f["dpo"]
    assert (r0["step"], r0["kl_mean"], r0["reward_mean"]) == (0, 0.0, 0.5)
    assert r0["reward_se"] == pytest.approx(0.5)  # sd(0, 1) = 0.7071 / sqrt 2
    # seeds averaged per prompt: rewards (1, 3), kl (2, 3)
    assert (r5["step"], r5["n_seeds"]) == (5, 2)
    assert r5["reward_mean"] == pytest.approx(2.0) and r5["reward_se"] == pytest.approx(1.0)
    assert r5["kl_mean"] == pytest.approx(2.5) and r5["kl_se"] == pytest.approx(0.5)
    assert (r10["n_seeds"], r10["reward_mean"], r10["reward_se"], r10["kl_mean"]) == (1, 1.0, 0.0, 5.0)


def _curve(points, se=0.05):
    """A frontier curve from (kl, reward) points; the reference (0, 0.4) first."""
    rows = [{"step": 0, "kl_mean": 0.0, "kl_se": 0.0, "reward_mean": 0.4, "reward_se": se, "n_seeds": 1}]
    for i, (kl, r) in enumerate(points, 1):
        rows.append({"step": 10 * i, "kl_mean": kl, "kl_se": 0.1, "reward_mean": r, "reward_se": se, "n_seeds": 2})
    return rows


def test_compare_to_dpo_interpolates_between_dpo_points():
    dpo = _curve([(4.0, 0.8), (8.0, 1.0)])
    # at KL 2 DPO gives 0.6 (halfway from the reference), at KL 6 it gives 0.9; KL 9 is outside
    c = curves.compare_to_dpo(_curve([(2.0, 0.9), (6.0, 0.91), (9.0, 2.0)]), dpo)
    assert (c["above"], c["level"], c["below"], c["outside"]) == (1, 1, 0, 1)
    assert c["mean_diff"] == pytest.approx((0.3 + 0.01) / 2)


def test_verdict_sentence_flips_with_the_numbers():
    dpo = _curve([(4.0, 0.6), (8.0, 0.8), (12.0, 1.0)])
    above = {"dpo": dpo, "tdpo1": _curve([(2.0, 0.7), (5.0, 1.0)]), "tdpo2-a0.5": _curve([(3.0, 0.9)])}
    v = curves.verdict(above)
    assert "is supported by this run" in v
    assert "tdpo1: 2 above of 2 points (mean reward +0.275)" in v and "KL(π_θ‖π_ref)" in v
    below = {"dpo": dpo, "tdpo1": _curve([(2.0, 0.2), (5.0, 0.3)]), "tdpo2-a0.5": _curve([(3.0, 0.5)])}
    assert "is contradicted by this run" in curves.verdict(below)
    mixed = {"dpo": dpo, "tdpo1": _curve([(2.0, 0.2)]), "tdpo2-a0.5": _curve([(3.0, 0.9)])}
    assert "is mixed by this run" in curves.verdict(mixed)
    noisy = {"dpo": dpo, "tdpo1": _curve([(2.0, 0.7)], se=0.2)}  # +0.2 within 2 x hypot(0.05, 0.2) = 0.41
    assert "not decided (within noise)" in curves.verdict(noisy)
    far = {"dpo": dpo, "tdpo1": _curve([(20.0, 0.1)])}
    assert "tdpo1 has no point inside DPO's KL range" in curves.verdict(far)
    assert "not decided" in curves.verdict({"tdpo1": dpo})


def test_heldout_accuracy_over_seeds():
    m = {
        ("dpo", 0): [{"step": 0, "eval_loss": 1, "eval_rewards/accuracies": 0.0}, {"step": 1, "kl/chosen": 0.1}],
        ("dpo", 1): [{"step": 0, "eval_loss": 1, "eval_rewards/accuracies": 0.5}],
        ("tdpo1", 0): [{"step": 4, "eval_loss": 1, "eval_rewards/accuracies": 0.75}],
    }
    assert curves.heldout_accuracy(m) == {"dpo": [(0, 0.25, 0.25)], "tdpo1": [(4, 0.75, 0.0)]}


def _seed(acc, ent, ntok, kl=1.0):
    return {
        "accuracy": acc,
        "entropy_sum": ent,
        "n_tokens": ntok,
        "kl_samples": [kl],
        "kl_chosen": 0.1,
        "kl_rejected": 0.3,
    }


def test_hh_table_spreads_over_seeds_or_pairs():
    rows = table1.hh_table(
        {
            "dpo": [_seed([1, 0, 1, 1], [6.0, 2.0], [2, 2]), _seed([1, 0, 0, 1], [4.0], [2])],
            "tdpo2-a0.5": [_seed([1, 1, 0, 1], [3.0, 9.0], [2, 2])],
        }
    )
    d, t = rows
    assert (d["variant"], d["n_seeds"], d["spread_kind"]) == ("dpo", 2, "sd over seeds")
    assert d["accuracy"] == pytest.approx(62.5) and d["accuracy_spread"] == pytest.approx(12.5 * 2**0.5)
    assert d["entropy"] == pytest.approx(2.0) and d["entropy_spread"] == pytest.approx(0.0)
    assert t["accuracy"] == pytest.approx(75.0) and t["accuracy_spread"] == pytest.approx(25.0)  # se of 1,1,0,1
    assert t["entropy"] == pytest.approx(3.0) and t["entropy_spread"] == pytest.approx(1.5)  # se of 1.5, 4.5
    assert (t["kl_samples"], t["kl_chosen"], t["kl_rejected"]) == (1.0, 0.1, 0.3)


def _hh_rows(acc, ent, spread=1.0):
    return [
        {"variant": v, "accuracy": a, "accuracy_spread": spread, "entropy": e, "entropy_spread": spread / 100}
        for v, a, e in zip(("dpo", "tdpo1", "tdpo2-a0.5"), acc, ent)
    ]


def test_hh_sentence_flips_with_the_numbers():
    like = table1.hh_sentence(_hh_rows((55.0, 58.0, 64.0), (3.0, 3.5, 3.9)))
    assert "by accuracy the order tdpo2 > tdpo1 > dpo matches the paper's" in like
    assert "TDPO2 is +9.0 points above DPO beyond the spread, as in the paper" in like
    assert "by entropy the order tdpo2 > tdpo1 > dpo matches" in like
    unlike = table1.hh_sentence(_hh_rows((64.0, 58.0, 55.0), (3.9, 3.5, 3.0)))
    assert "by accuracy the order dpo > tdpo1 > tdpo2 differs from the paper's tdpo2 > tdpo1 > dpo" in unlike
    assert "-9.0 points below DPO beyond the spread, unlike the paper" in unlike
    noisy = table1.hh_sentence(_hh_rows((55.0, 58.0, 56.0), (3.0, 3.5, 3.0), spread=5.0))
    assert "within the spread of DPO" in noisy and "dpo 55.0%/3.00" in noisy
    assert "lacks DPO or TDPO2" in table1.hh_sentence(_hh_rows((1, 2, 3), (1, 2, 3))[:2])


def test_report_and_plots_on_fake_points(tmp_path):
    cfg = config.DemoConfig(iters=10, eval_points=2, seeds=(0, 1), tdpo2_alphas=(0.5,), n_eval_prompts=2)
    assert cfg.eval_steps() == [5, 10]
    row = {"name": "x", "n_samples": 4, "reward_mean": 0.1, "seq_kl_mean": 0.0, "entropy_per_token": 2.5}
    points = {"reference": {**_rec([0.0, 0.2, 0.4, 0.2], [0.0] * 4, [0, 0, 1, 1]), "row": dict(row, name="reference")}}
    for i, (v, _, _) in enumerate(cfg.variants()):
        for s in cfg.seeds:
            for k in cfg.eval_steps():
                r = 0.2 + 0.1 * i + 0.02 * k
                rec = _rec([r, r + 0.1, r, r + 0.1], [k / (i + 1)] * 4, [0, 0, 1, 1])
                points[(v, s, k)] = {**rec, "row": dict(row, name=v, reward_mean=r + 0.05, seq_kl_mean=k / (i + 1))}
    metrics = {
        (v, s): [{"step": k, "kl/chosen": 0.1 * k, "kl/rejected": 0.2 * k, "kl/margin": 0.1 * k} for k in range(1, 11)]
        + [{"step": k, "eval_loss": 0.6, "eval_rewards/accuracies": 0.1 * k} for k in (0, 5, 10)]
        for v, _, _ in cfg.variants()
        for s in cfg.seeds
    }
    summary = {"prompts": 5, "pairs": 4, "train_pairs": 3, "heldout_pairs": 1, "skipped_near_tie": 1}
    timings = {"samples": {"wall_s": 1.5, "cpu_s": 2.0}, "train dpo seed 0": {"wall_s": 3.0, "cpu_s": 5.5}}
    path = report.write_report(tmp_path, cfg, points, metrics, summary, timings)
    text = path.read_text()
    res = json.loads((tmp_path / "results.json").read_text())
    # tdpo1 (i=1): reward 0.4 at KL 2.5 vs DPO's 0.3 at KL 5 -> above; tdpo2 higher still
    assert "**Verdict: the paper's claim" in text and "is supported by this run" in res["verdict"]
    assert res["verdict"] in text
    assert "| tdpo1 | 5 | 2 | 0.450 ± 0.000 | 2.50 ± 0.00 |" in text
    assert res["frontier"]["dpo"][2]["reward_mean"] == pytest.approx(0.45)
    assert [f["name"] for f in res["final"]] == ["reference", "dpo", "tdpo1", "tdpo2-a0.5"]
    assert res["final"][1]["reward_mean"] == pytest.approx(0.45)
    assert res["heldout_accuracy"]["dpo"] == [[0, 0.0, 0.0], [5, 0.5, 0.0], [10, 1.0, 0.0]]
    assert "| dpo | 0.00 | 0.50 | 1.00 |" in text
    assert "KL(π_ref‖π_θ) on pairs" in text and "KL(pi_theta || pi_ref)" in text
    assert "| **total** | **4.5** | **7.5** |" in text
    _png_ok(tmp_path / "reward_vs_kl.png")
    _png_ok(tmp_path / "kl_curves.png")


def test_plots_draw_the_numbers_they_are_given(tmp_path, monkeypatch):
    """The figures hold their inputs: each frontier curve runs from the reference (0, its reward)
    through the checkpoints; the KL panels plot the mean over seeds per step and its trailing mean."""
    figs = {}
    monkeypatch.setattr(plots, "_save_fig", lambda fig, path: figs.__setitem__(pathlib.Path(path).name, fig))
    plots.plot_frontier({"dpo": _curve([(4.0, 0.8), (8.0, 1.0)]), "tdpo1": _curve([(2.0, 0.9)])}, tmp_path / "f.png")
    drawn = {
        c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
        for c in figs["f.png"].axes[0].containers
    }
    assert drawn == {
        plots._label("dpo"): ([0.0, 4.0, 8.0], [0.4, 0.8, 1.0]),
        plots._label("tdpo1"): ([0.0, 2.0], [0.4, 0.9]),
    }
    metrics = {
        ("dpo", seed): [{"step": k, "kl/chosen": f * k, "kl/rejected": 0.0, "kl/margin": 0.0} for k in (1, 2, 3, 4)]
        for seed, f in ((0, 0.1), (1, 0.3))
    }
    plots.plot_kl_curves(metrics, tmp_path / "k.png")
    dots, mean = figs["k.png"].axes[0].lines[:2]
    assert list(dots.get_xdata()) == [1, 2, 3, 4]
    assert list(dots.get_ydata()) == pytest.approx([0.2, 0.4, 0.6, 0.8])  # mean of the two seeds
    assert list(mean.get_ydata()) == pytest.approx([0.2, 0.3, 0.4, 0.6])  # 3-record trailing mean


def test_moving_average_by_hand():
    assert plots._moving_average([1, 2, 3, 4], 3).tolist() == [1.0, 1.5, 2.0, 3.0]
    assert plots._moving_average([5], 3).tolist() == [5.0]


def test_read_metrics_keeps_train_and_eval_records(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 2, "loss": 1, "kl/chosen": 0.2, "kl/rejected": 0.3, "kl/margin": 0.1},
                {"step": 0, "eval_loss": 1.0},
                {"step": 1, "loss": 1, "kl/chosen": 0.1, "kl/rejected": 0.1, "kl/margin": 0.0},
                {"config": 1},
            ]
        )
        + "\n"
    )
    assert [r["step"] for r in report.read_metrics(f)] == [0, 1, 2]
    assert report.read_metrics(tmp_path / "missing.jsonl") == []


def test_presets_estimates_and_variants():
    assert [v[0] for v in config.FULL.variants()] == ["dpo", "tdpo1", "tdpo2-a0.1", "tdpo2-a0.5", "tdpo2-a0.7"]
    assert len(config.FULL.seeds) >= 2 and len(config.FULL.eval_steps()) >= 5
    assert config.FULL.eval_steps()[-1] == config.FULL.iters
    for cfg in (config.QUICK, config.HH_QUICK):
        assert sum(s for _, s in config.estimate(cfg)) < 600
    for cfg in (config.FULL, config.HH_FULL):
        assert sum(s for _, s in config.estimate(cfg)) < 3600
    assert config.HH_FULL.model == "smollm2-135m-instruct" and config.HH_FULL.chat
    gemma = dataclasses.replace(config.HH_FULL, model="gemma3-270m")
    assert sum(s for _, s in config.estimate(config.HH_FULL)) == pytest.approx(
        0.6 * sum(s for _, s in config.estimate(gemma))
    )


def _tiny_model(tmp_path):
    return make_review_model_dir(tmp_path / "model")


def test_tiny_end_to_end_and_resume(tmp_path, capsys):
    cfg = config.DemoConfig(
        model=str(_tiny_model(tmp_path)),
        seeds=(0, 1),
        tdpo2_alphas=(0.5,),
        n_train_prompts=8,
        n_eval_prompts=3,
        samples_per_prompt=3,
        gen_max_tokens=5,
        min_reward_gap=0.0,
        gen_batch_size=8,
        iters=4,
        batch_size=2,
        eval_points=2,
        steps_per_report=1,
        eval_samples_per_prompt=2,
        eval_max_tokens=5,
        max_length=48,
        max_prompt_length=32,
        heldout_fraction=0.25,
    )
    length = lambda p, c: [float(len(x)) for x in c]  # noqa: E731
    out = tmp_path / "out"
    demo.run_demo(out, cfg, progress=False, reward_fn=length)
    printed = capsys.readouterr().out
    assert "estimated" in printed and "train 6 runs x 4 steps" in printed  # the plan, up front
    for f in ("report.md", "reward_vs_kl.png", "kl_curves.png", "pairs.jsonl", "heldout_pairs.jsonl", "timings.json"):
        assert (out / f).exists(), f
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "heldout_pairs.jsonl").read_text().splitlines()]
    assert len(held) == 2 and not {p["prompt"] for p in pairs} & {p["prompt"] for p in held}
    res = json.loads((out / "results.json").read_text())
    assert res["verdict"].startswith("Verdict: the paper's claim") and res["verdict"] in printed
    # each curve: the reference then steps 2 and 4, both seeds; values recomputed from the eval files
    for v in ("dpo", "tdpo1", "tdpo2-a0.5"):
        assert [r["step"] for r in res["frontier"][v]] == [0, 2, 4]
        assert [r["n_seeds"] for r in res["frontier"][v]] == [1, 2, 2]
    recs = [json.loads((out / "eval" / "tdpo1" / f"seed-{s}" / "step-4.json").read_text()) for s in (0, 1)]
    kl = [curves.per_prompt(r["kl"], r["prompt_index"]) for r in recs]
    assert res["frontier"]["tdpo1"][2]["kl_mean"] == pytest.approx(float(sum(kl).mean() / 2))
    rw = [curves.per_prompt(r["rewards"], r["prompt_index"]) for r in recs]
    assert rw[0].tolist() == [
        sum(map(len, [recs[0]["samples"][i]["completion"] for i in (2 * p, 2 * p + 1)])) / 2 for p in range(3)
    ]
    assert res["frontier"]["dpo"][2]["kl_mean"] > 0.0
    acc = res["heldout_accuracy"]["dpo"]
    assert [a[0] for a in acc] == [0, 2, 4] and all(0.0 <= a[1] <= 1.0 for a in acc)
    assert len([r for r in report.read_metrics(demo.run_dir(out, "dpo", 1) / "metrics.jsonl") if "loss" in r]) == 4
    # resume: everything is done, so a rerun only rewrites the report
    mtime = (demo.run_dir(out, "dpo", 0) / "adapters.safetensors").stat().st_mtime_ns
    demo.run_demo(out, cfg, progress=False, reward_fn=length)
    assert "(done)" in capsys.readouterr().out
    assert (demo.run_dir(out, "dpo", 0) / "adapters.safetensors").stat().st_mtime_ns == mtime
    # other data settings in the same folder: refused with the reason
    with pytest.raises(ValueError, match="other settings"):
        demo.run_demo(out, dataclasses.replace(cfg, samples_per_prompt=4), progress=False, reward_fn=length)


@pytest.mark.parametrize("chat", [True, False])
def test_tiny_hh_end_to_end(tmp_path, capsys, chat):
    """The HH experiment on a tiny model; ``chat``: the dialogues as messages in the model's
    chat template (the default), else the raw HH text."""
    from support.chat_tokenizers import GEMMA_LIKE

    model_dir = _tiny_model(tmp_path)
    if chat:
        tok_cfg = model_dir / "tokenizer_config.json"
        tok_cfg.write_text(json.dumps(dict(json.loads(tok_cfg.read_text()), chat_template=GEMMA_LIKE)))

    recs = [
        {
            "chosen": f"\n\nHuman: tell me about film {i}\n\nAssistant: it was good {i}",
            "rejected": f"\n\nHuman: tell me about film {i}\n\nAssistant: no {i}",
        }
        for i in range(12)
    ]
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = config.HHConfig(
        model=str(model_dir),
        data=str(data),
        chat=chat,
        seeds=(0, 1),
        n_train_pairs=6,
        n_heldout_pairs=4,
        n_eval_prompts=3,
        iters=3,
        batch_size=2,
        max_length=48,
        max_prompt_length=24,
        eval_max_tokens=5,
        score_batch_size=3,
        gen_batch_size=4,
    )
    path = hh.run_hh(tmp_path / "out", cfg, progress=False)
    res = json.loads((tmp_path / "out" / "results_hh.json").read_text())
    assert [r["variant"] for r in res["table"]] == ["dpo", "tdpo1", "tdpo2-a0.5"]
    ev = [json.loads((tmp_path / "out" / "eval" / "tdpo1" / f"seed-{s}.json").read_text()) for s in (0, 1)]
    assert all(len(e["accuracy"]) == 4 and len(e["n_tokens"]) == 3 for e in ev)
    acc = [100 * sum(e["accuracy"]) / 4 for e in ev]
    assert res["table"][1]["accuracy"] == pytest.approx(sum(acc) / 2)
    assert res["table"][1]["spread_kind"] == "sd over seeds"
    text = path.read_text()
    assert res["sentence"] in text and "| 60.08 | 4.727 |" in text
    printed = capsys.readouterr().out
    assert "Against Table 1" in printed
    assert ("12 HH pairs as chat messages (0 skipped" in printed) == chat
    prompt = json.loads((tmp_path / "out" / "hh_pairs.json").read_text())["heldout"][0]["prompt_ids"]
    assert (GEMMA_LIKE and "<start_of_turn>" in AutoTokenizer.from_pretrained(model_dir).decode(prompt)) == chat
    with pytest.raises(FileNotFoundError, match="--data"):
        hh.run_hh(tmp_path / "out2", dataclasses.replace(cfg, data=str(tmp_path / "missing.jsonl")), progress=False)
