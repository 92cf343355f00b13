"""The Anthropic-HH experiment of the TDPO paper (Zeng et al., 2024, Sec. 5.2, Table 1), offline.

1. ``data``   the HH pairs file (``HHConfig.data``), encoded with the model's tokenizer, shuffled
   with ``seeds[0]`` and cut into training pairs and held-out pairs; the held-out pairs' dialogues
   are also the prompts for generation;
2. ``train``  DPO, TDPO1 and TDPO2 (each alpha) LoRA adapters, one run per seed, equal budgets;
3. ``eval``   per run, on the held-out pairs: preference accuracy of the method's implicit reward
   (chosen above rejected; :func:`tdpo_mlx.losses.pair_metrics`) and the sequential
   KL(pi_ref || pi_theta) of chosen and rejected replies; on the held-out prompts: the entropy of
   generated replies (nats/token) and their sequence KL(pi_theta || pi_ref);
4. ``report`` ``report_hh.md`` and ``results_hh.json``: the table with spreads over seeds beside the
   paper's Table 1 and a sentence on what matches.

Every stage writes its outputs atomically and is skipped when they exist (resume by rerunning).
"""

from __future__ import annotations

import pathlib

import mlx.core as mx
import numpy as np

from ..atomic import write_json, write_text
from ..checkpoint import load_adapter_weights
from ..data import load_preference_data, make_batch, pad_id
from ..data.hh import hh_chat_records
from ..data.sources import read_rows
from ..errors import NotFoundError, UserError
from ..evaluation import sample_statistics
from ..fast_stats import batch_statistics
from ..generation import generate_samples
from ..losses import pair_metrics, preference_loss
from ..models import resolve_model
from ..stats import split_pairs
from .common import (
    load_eval_model,
    progress_bar,
    read_json,
    reference_if,
    run_dir,
    say,
    start_run,
    train_runs,
)
from .config import HHConfig
from .pairs import encoded
from .report import machine_line, settings_and_timings
from .table1 import PAPER_TABLE1, hh_sentence, hh_table


def pair_dict(p) -> dict:
    return {"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)}


def stage_data(out: pathlib.Path, cfg: HHConfig, tok) -> tuple[list, list]:
    """Encode the HH file and cut (train, held-out) pair lists; cached in ``hh_pairs.json``.

    Raises:
        FileNotFoundError: the data file is missing (names the ``--data`` option).
        ValueError: fewer usable pairs than ``n_train_pairs + n_heldout_pairs``.
    """
    f = out / "hh_pairs.json"
    if not f.exists():
        if not pathlib.Path(cfg.data).exists():
            raise NotFoundError(
                f"--data: {cfg.data} not found; pass the HH-RLHF pairs file (e.g. "
                "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz)"
            )
        data = cfg.data
        if cfg.chat:  # the turns as messages, framed by the model's own chat template
            data, skipped = hh_chat_records(read_rows(cfg.data).rows)
            say(f"  {len(data)} HH pairs as chat messages ({skipped} skipped: not alternating turns)")
        pairs, summary = load_preference_data(
            data, tokenizer=tok, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
        need = cfg.n_train_pairs + cfg.n_heldout_pairs
        if len(pairs) < need:
            raise UserError(f"{cfg.data}: {len(pairs)} usable pairs, the preset needs {need}")
        order = np.random.default_rng(cfg.seeds[0]).permutation(len(pairs))
        train = [pair_dict(pairs[i]) for i in order[: cfg.n_train_pairs]]
        held = [pair_dict(pairs[i]) for i in order[cfg.n_train_pairs : need]]
        write_json(f, {"train": train, "heldout": held, "records": len(pairs)})
    d = read_json(f)
    return encoded(d["train"]), encoded(d["heldout"])


def pair_scores(model, pairs, cfg: HHConfig, loss: str, alpha: float | None, pad_id: int) -> dict:
    """Per held-out pair: accuracy of the method's implicit reward (1 chosen > rejected, else 0),
    accuracy of the plain log-ratio reward beta*m (the same measure for every method), and the
    sequential KL(pi_ref || pi_theta) of chosen and rejected (nats). Lists of floats."""
    out = {"accuracy": [], "accuracy_logratio": [], "kl_chosen": [], "kl_rejected": []}
    for i in range(0, len(pairs), cfg.score_batch_size):
        batch = make_batch(pairs[i : i + cfg.score_batch_size], pad_id)
        ch, rj = split_pairs(batch_statistics(model, batch, differentiable=False))
        m = pair_metrics(ch, rj, preference_loss(ch, rj, loss, cfg.beta, alpha if alpha is not None else 0.5))
        lr = (ch.logratio > rj.logratio).astype(mx.float32)
        mx.eval(m, lr)
        out["accuracy"] += m["rewards/accuracies"].tolist()
        out["accuracy_logratio"] += lr.tolist()
        out["kl_chosen"] += m["kl/chosen"].tolist()
        out["kl_rejected"] += m["kl/rejected"].tolist()
    return out


def prompt_texts(tok, pairs, n: int) -> list[str]:
    """The first ``n`` held-out dialogues up to the assistant's turn, as text (BOS dropped: the
    generator adds it back)."""
    bos = getattr(tok, "bos_token_id", None)
    out = []
    for p in pairs[:n]:
        ids = list(p.prompt_ids)
        if bos is not None and ids[:1] == [bos]:
            ids = ids[1:]
        out.append(tok.decode(ids))
    return out


def generation_scores(model, tok, prompts, cfg: HHConfig, seed: int, *, policy: bool) -> dict:
    """Sample replies on ``prompts`` (policy, or the reference with ``policy=False``) and return
    per sample the entropy sum (nats), token count and sequence KL(pi_theta || pi_ref)."""
    with reference_if(model, not policy):
        s = generate_samples(model, tok, prompts, progress=False, **cfg.eval_sampling(seed))
        st = sample_statistics(
            model, s, compute_kl=policy, batch_size=cfg.score_batch_size, pad_id=pad_id(tok), progress=False
        )
    return {
        "entropy_sum": np.asarray(st["entropy_sum"]).tolist(),
        "n_tokens": np.asarray(st["n_tokens"]).astype(int).tolist(),
        "kl_samples": np.asarray(st["kl"]).tolist(),
    }


def stage_eval(out: pathlib.Path, cfg: HHConfig, get_model, heldout, progress: bool) -> dict:
    """Score every run (and the reference's generations once); one JSON file per run."""
    runs = [(v, s) for v in cfg.variants() for s in cfg.seeds]
    bar = progress_bar(len(runs) + 1, "hh eval runs", progress)
    ref_f = out / "eval" / "reference.json"
    if not ref_f.exists():
        model, tok = get_model()
        write_json(
            ref_f, generation_scores(model, tok, prompt_texts(tok, heldout, cfg.n_eval_prompts), cfg, 0, policy=False)
        )
    bar.update(1)
    res = {"reference": read_json(ref_f)}
    for (name, loss, alpha), seed in runs:
        f = out / "eval" / name / f"seed-{seed}.json"
        if not f.exists():
            model, tok = get_model()
            load_adapter_weights(model, run_dir(out, name, seed) / "adapters.safetensors")
            rec = pair_scores(model, heldout, cfg, loss, alpha, pad_id(tok))
            rec.update(
                generation_scores(model, tok, prompt_texts(tok, heldout, cfg.n_eval_prompts), cfg, seed, policy=True)
            )
            write_json(f, rec)
        res[(name, seed)] = read_json(f)
        bar.update(1)
    bar.close()
    return res


def table_inputs(cfg: HHConfig, res: dict) -> dict:
    """``{variant: [per-seed dict]}`` for :func:`tdpo_mlx.demo.table1.hh_table` (KLs on pairs
    averaged over the held-out pairs)."""
    out = {}
    for name, _, _ in cfg.variants():
        for s in cfg.seeds:
            r = res.get((name, s))
            if r is not None:
                d = dict(r, kl_chosen=float(np.mean(r["kl_chosen"])), kl_rejected=float(np.mean(r["kl_rejected"])))
                out.setdefault(name, []).append(d)
    return out


def hh_markdown(rows, ref: dict) -> str:
    """The HH table (this run beside the paper's Table 1) as markdown."""
    ref_ent = float(np.sum(ref["entropy_sum"]) / max(np.sum(ref["n_tokens"]), 1))
    lines = [
        "| method | seeds | accuracy % (± spread) | entropy nats/token (± spread) | seq. KL(π_θ‖π_ref) on samples "
        "| KL(π_ref‖π_θ) chosen | KL(π_ref‖π_θ) rejected | paper accuracy % | paper entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| reference | – | – | {ref_ent:.3f} | 0.00 | 0 | 0 | – | – |",
    ]
    for r in rows:
        pa, pe = PAPER_TABLE1.get(r["variant"].split("-a")[0], (None, None))
        lines.append(
            f"| {r['variant']} | {r['n_seeds']} | {r['accuracy']:.1f} ± {r['accuracy_spread']:.1f} | "
            f"{r['entropy']:.3f} ± {r['entropy_spread']:.3f} | {r['kl_samples']:.2f} | {r['kl_chosen']:.3f} | "
            f"{r['kl_rejected']:.3f} | {pa if pa is not None else '–'} | {pe if pe is not None else '–'} |"
        )
    return "\n".join(lines)


def write_hh_report(out: pathlib.Path, cfg: HHConfig, res: dict, timings: dict) -> pathlib.Path:
    """``report_hh.md`` and ``results_hh.json``; returns the report's path."""
    inputs = table_inputs(cfg, res)
    rows = hh_table(inputs)
    sentence = hh_sentence(rows)
    lr_acc = {v: 100.0 * float(np.mean([np.mean(s["accuracy_logratio"]) for s in per])) for v, per in inputs.items()}
    spread = rows[0]["spread_kind"] if rows else ""
    lines = [
        "# TDPO on Anthropic HH (the paper's Table 1, small)",
        "",
        f"Model `{cfg.model}`; {cfg.n_train_pairs} training pairs and {cfg.n_heldout_pairs} held-out pairs "
        f"from `{cfg.data}`; LoRA adapters trained with {', '.join(v[0] for v in cfg.variants())}, "
        f"{cfg.iters} steps x {cfg.batch_size} pairs each (equal budgets), seeds {list(cfg.seeds)}.",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"**{sentence}**",
        "",
        hh_markdown(rows, res["reference"]),
        "",
        f"Accuracy: share of the {cfg.n_heldout_pairs} held-out pairs whose chosen reply gets the higher "
        "implicit reward of the method (beta (m + KL) for TDPO, beta m for DPO; TDPO Sec. 4 / the paper's "
        "code). The plain log-ratio reward beta m, the same measure for all methods: "
        + ", ".join(f"{v} {a:.1f}%" for v, a in lr_acc.items())
        + f". Entropy: the policy's mean per-token predictive entropy over replies sampled (temperature "
        f"{cfg.temp}, up to {cfg.eval_max_tokens} tokens) for {cfg.n_eval_prompts} held-out dialogues. "
        "KL(π_θ‖π_ref) on samples: summed over the generated reply; KL(π_ref‖π_θ): the sequential KL of "
        f"TDPO Eq. 8 on the held-out chosen / rejected replies. Spread: {spread}. Paper: Pythia-2.8B, full "
        "fine-tuning on the whole HH training set (Table 1).",
        "",
        *settings_and_timings(cfg, timings),
    ]
    path = out / "report_hh.md"
    write_text(path, "\n".join(lines))
    write_json(
        out / "results_hh.json",
        {"config": cfg.to_dict(), "sentence": sentence, "table": rows, "accuracy_logratio": lr_acc, "timings": timings},
    )
    return path


def run_hh(out, cfg: HHConfig, *, progress: bool = True) -> pathlib.Path:
    """Run (or resume) the HH experiment into folder ``out``; returns the path of ``report_hh.md``.

    Raises:
        FileNotFoundError: the HH data file is missing.
        ValueError: ``out`` holds a run with other settings.
    """
    out, clock = start_run(out, cfg, "Anthropic-HH experiment")

    clock.start()
    say(f"[1/4] model and data: {cfg.model}, {cfg.data}")
    model_dir = resolve_model(cfg.model)
    model, tok = load_eval_model(model_dir, cfg)
    train_pairs, heldout = stage_data(out, cfg, tok)
    say(f"  {len(train_pairs)} training pairs, {len(heldout)} held-out pairs")
    clock.stop("model + data")

    train_runs(out, cfg, model_dir, train_pairs, [], clock, stage="[2/4]", progress=progress)

    clock.start()
    say(f"[3/4] eval: {len(heldout)} held-out pairs and {cfg.n_eval_prompts} prompts per run")
    res = stage_eval(out, cfg, lambda: (model, tok), heldout, progress)
    clock.stop("eval")

    say("[4/4] report")
    path = write_hh_report(out, cfg, res, clock.t)
    say(read_json(out / "results_hh.json")["sentence"])
    say(f"wrote {path}")
    return path
