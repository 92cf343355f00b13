"""Demo: openers, prompt split, pair building on fake rewards, report/plots on fake metrics,
and a tiny end-to-end run (tiny local model) that also resumes."""

import json
import struct
import sys
import zlib

import pytest

import tdpo_mlx  # noqa: F401
from tdpo_mlx.demo import config, report
from tdpo_mlx.demo import run as demo
from tdpo_mlx.evaluate import Sample


def _s(p, k, text, ids):
    return Sample(p, k, f"prompt{p}", text, [2, 10 + p], ids, True)


def test_openers_are_many_distinct_and_neutral():
    from tdpo_mlx.rewards import sentiment_reward

    ops = demo.load_openers()
    assert len(ops) >= 300 and len(set(ops)) == len(ops)
    r = sentiment_reward(ops, [""] * len(ops))
    assert max(abs(x) for x in r) <= 0.05  # sentiment is decided by the continuation


def test_split_prompts_disjoint_and_seeded():
    ps = [f"p{i}" for i in range(20)]
    tr, ev = demo.split_prompts(ps, 12, 5, seed=3)
    assert len(tr) == 12 and len(ev) == 5 and not set(tr) & set(ev)
    assert (tr, ev) == demo.split_prompts(ps, 12, 5, seed=3)
    assert tr != demo.split_prompts(ps, 12, 5, seed=4)[0]
    with pytest.raises(ValueError, match="only 20"):
        demo.split_prompts(ps, 18, 5, seed=0)


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
    pairs, summ = demo.build_pairs(samples, rewards, min_gap=0.1)
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
        demo.build_pairs(samples, rewards[:-1], 0.1)


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # walk the chunks and check every CRC; IHDR gives a sane size
    pos, names = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        name = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(name + body) == crc
        names.append(name)
        if name == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
            assert 200 < w < 3000 and 200 < h < 3000
        pos += 12 + n
    assert names[0] == b"IHDR" and names[-1] == b"IEND"


def _row(name, reward, kl, method=None, step=0):
    r = {
        "name": name,
        "n_samples": 8,
        "reward_mean": reward,
        "reward_std": 0.1,
        "seq_kl_mean": kl,
        "seq_kl_std": 0.1,
        "entropy_per_token": 2.5,
        "tokens_per_sample": 20.0,
        "finished_fraction": 0.1,
        "win_rate_vs_reference": 0.5 if method is None else 0.7,
        "distinct_1": 0.5,
        "distinct_2": 0.8,
        "step": step,
    }
    if method:
        r["method"] = method
    return r


def test_report_and_plots_on_fake_metrics(tmp_path):
    cfg = config.DemoConfig(iters=10)
    rows = {"reference": _row("reference", 0.1, 0.0)}
    for i, m in enumerate(config.METHODS):
        rows[f"{m}@5"] = _row(f"{m}@5", 0.2 + i * 0.01, 1.0 + i, m, 5)
        rows[m] = _row(m, 0.4 + i * 0.05, 3.0 - i, m, 10)
    metrics = {
        m: [
            {"step": s, "kl/chosen": 0.1 * s, "kl/rejected": 0.2 * s + i, "kl/margin": 0.1 * s + i, "loss": 0.6}
            for s in range(1, 11)
        ]
        for i, m in enumerate(config.METHODS)
    }
    summary = {
        "prompts": 5,
        "pairs": 4,
        "skipped_near_tie": 1,
        "chosen_reward_mean": 0.5,
        "rejected_reward_mean": -0.2,
        "sample_reward_mean": 0.1,
    }
    path = report.write_report(
        tmp_path,
        cfg,
        rows,
        metrics,
        summary,
        {"samples": {"wall_s": 1.5, "cpu_s": 2.0}, "train dpo": {"wall_s": 3.0, "cpu_s": 5.5}},
        {"reference": ("The film", " was fine|ok", 0.2)},
    )
    text = path.read_text()
    assert "| reference | 0.100 | 0.00 |" in text
    assert "| tdpo2 | 0.500 | 1.00 |" in text
    assert "| dpo@5 | 0.200 | 1.00 |" in text  # intermediate checkpoints listed
    assert "dpo: reward +0.400 vs reference +0.100 (higher, +0.300)" in text
    assert "KL(pi_theta || pi_ref)" in text and "| **total** | **4.5** | **7.5** |" in text
    assert "was fine\\|ok" in text
    _png_ok(tmp_path / "reward_vs_kl.png")
    _png_ok(tmp_path / "kl_curves.png")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["rows"]["tdpo1"]["seq_kl_mean"] == 2.0


def test_moving_average_by_hand():
    assert report._moving_average([1, 2, 3, 4], 3).tolist() == [1.0, 1.5, 2.0, 3.0]
    assert report._moving_average([5], 3).tolist() == [5.0]


def test_read_metrics_keeps_train_records(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 2, "loss": 1, "kl/chosen": 0.2, "kl/rejected": 0.3, "kl/margin": 0.1},
                {"step": 0, "eval_loss": 1.0},
                {"step": 1, "loss": 1, "kl/chosen": 0.1, "kl/rejected": 0.1, "kl/margin": 0.0},
            ]
        )
        + "\n"
    )
    assert [r["step"] for r in report.read_metrics(f)] == [1, 2]
    assert report.read_metrics(tmp_path / "missing.jsonl") == []


def test_tiny_end_to_end_and_resume(tmp_path, capsys):
    pytest.importorskip("tdpo_mlx.trainer")
    pytest.importorskip("tdpo_mlx.gguf")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_evaluate import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "model")
    cfg = config.DemoConfig(
        model=str(d),
        n_train_prompts=6,
        n_eval_prompts=3,
        samples_per_prompt=3,
        gen_max_tokens=5,
        min_reward_gap=0.0,
        gen_batch_size=8,
        iters=4,
        batch_size=2,
        save_every=2,
        steps_per_report=1,
        eval_samples_per_prompt=2,
        eval_max_tokens=5,
        max_length=48,
        max_prompt_length=32,
    )
    length = lambda p, c: [float(len(x)) for x in c]  # noqa: E731
    out = tmp_path / "out"
    demo.run_demo(out, cfg, progress=False, reward_fn=length)
    for f in (
        "report.md",
        "reward_vs_kl.png",
        "kl_curves.png",
        "pairs.jsonl",
        "samples.jsonl",
        "eval/reference.json",
        "eval/dpo.json",
        "eval/tdpo2-step-2.json",
        "adapters/tdpo1/adapters.safetensors",
        "timings.json",
    ):
        assert (out / f).exists(), f
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_reward"] >= p["rejected_reward"] for p in pairs)
    res = json.loads((out / "results.json").read_text())
    assert res["rows"]["reference"]["seq_kl_mean"] == 0.0
    assert res["rows"]["dpo"]["seq_kl_mean"] > 0.0
    assert len(report.read_metrics(out / "adapters" / "dpo" / "metrics.jsonl")) == 4
    # resume: everything is done, so a rerun only rewrites the report
    mtime = (out / "adapters" / "dpo" / "adapters.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    demo.run_demo(out, cfg, progress=False, reward_fn=length)
    assert "(done)" in capsys.readouterr().out
    assert (out / "adapters" / "dpo" / "adapters.safetensors").stat().st_mtime_ns == mtime
    # other data settings in the same folder: refused with the reason
    import dataclasses

    with pytest.raises(ValueError, match="other settings"):
        demo.run_demo(out, dataclasses.replace(cfg, samples_per_prompt=4), progress=False, reward_fn=length)
