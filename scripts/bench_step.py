#!/usr/bin/env python
"""Benchmark one TDPO training step: plain full-logits statistics vs the fast path.

Both steps are ``nn.value_and_grad`` of the TDPO loss + an AdamW update of the LoRA
parameters; "plain" computes the statistics with :func:`tdpo_mlx.stats.model_statistics`
((2B, L-1, V) logits for policy and reference), "fast" with
:func:`tdpo_mlx.fast_stats.batch_statistics`. They run alternately in one process (plain, fast,
then fast, plain, ...) so machine noise hits both; medians are reported.

Before timing, both are evaluated on the same parameters: ``max_rel_diff`` compares the
statistics (logps, ref_logps, logratio, kl; relative to each field's largest magnitude) and
``max_grad_rel_diff`` the LoRA gradients (per parameter, relative to its largest magnitude).

Default shape (issue 5): Gemma 3 270M, 2 pairs, prompt 256 + response 256 tokens, LoRA rank
8 on every linear layer of every block, TDPO2, float32. The plain step at that shape needs more
than 20 GB (four (4, 511, 262144) float32 tensors and their gradients); on a smaller machine use
``--prompt-len 128 --response-len 128``, or ``--only fast`` to measure the fast step alone. ``--tiny`` uses a small random
Gemma-3-shaped model (runs in seconds). The last line printed is one JSON object.

Real data (``--data``): N steps over real pairs with the trainer's batching, real (non-padding)
tokens per second, padding, prompt tokens computed twice, eval seconds per pair; ``--before REV``
runs the same with the fast path of that git revision (MLX's default buffer cache, unsorted eval).

Example:
    nice python scripts/bench_step.py --steps 3
    python scripts/bench_step.py --data ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz --pairs 4 --steps 6 --before 8fa47ff
    python scripts/bench_step.py --tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tdpo_mlx  # noqa: E402,F401  (loads the optimized BLAS before mlx.core)
from tdpo_mlx import backend  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="gemma3-270m", help="model path or named source (tdpo_mlx.models.resolve_model)")
    p.add_argument("--tiny", action="store_true", help="tiny random Gemma-3-shaped model instead of --model")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one untimed)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--loss-type", default="tdpo2")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--chunk-size", type=int, default=None, help="positions per LM-head chunk (default: auto)")
    p.add_argument("--grad-checkpoint", action="store_true", help="checkpoint transformer blocks (both steps)")
    p.add_argument("--only", choices=["both", "plain", "fast"], default="both")
    p.add_argument(
        "--rows",
        action="store_true",
        help="also time the fast path with every row run in full (share_prompt=False: the prompt "
        "computed for chosen and again for rejected, as before prompt sharing)",
    )
    p.add_argument(
        "--mlx-head",
        action="store_true",
        help="also time the fast path traced by nn.value_and_grad with MLX's LM-head/KL kernel (the Metal/CUDA "
        "path) instead of the CPU step with the head in NumPy (tdpo_mlx.cpu_step)",
    )
    p.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="also time the fast path as of git revision REV (e.g. 8fa47ff), with MLX's default buffer cache",
    )
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-part timing of one fast step")
    p.add_argument(
        "--data",
        default=None,
        help="real-data mode: N (--steps) training steps over this preference file with the trainer's batching "
        "(--pairs pairs a batch, --max-length), then evaluation of --eval-pairs held-out pairs; with --before REV "
        "the same run on the fast path as of REV",
    )
    p.add_argument("--max-length", type=int, default=512, help="real-data mode: maximum prompt + response tokens")
    p.add_argument("--eval-pairs", type=int, default=16, help="real-data mode: held-out pairs evaluated")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tiny_model(seed: int):
    """A 2-layer random Gemma 3 text model with a 32k vocabulary (tied embeddings)."""
    import mlx.core as mx
    from mlx_lm.models import gemma3_text

    mx.random.seed(seed)
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text",
        hidden_size=128,
        num_hidden_layers=2,
        intermediate_size=256,
        num_attention_heads=2,
        head_dim=64,
        rms_norm_eps=1e-6,
        vocab_size=32000,
        num_key_value_heads=1,
        sliding_window=64,
        sliding_window_pattern=2,
    )
    model = gemma3_text.Model(args)
    model.tie_word_embeddings = True
    model.pop("lm_head")
    return model


def load_model(args):
    import mlx.core as mx
    from mlx.utils import tree_map

    if args.tiny:
        model = tiny_model(args.seed)
        name = "tiny-gemma3 (random)"
    else:
        from mlx_lm.utils import load

        from tdpo_mlx.models import resolve_model

        path = resolve_model(args.model)
        model, _ = load(path)
        name = f"{args.model} ({path})"
    dtype = backend.default_compute_dtype()
    model.update(tree_map(lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters()))
    return model, name, dtype


def attach_lora(model, rank: int, seed: int):
    """LoRA on every linear layer of every block; lora_b random (small) so policy != reference."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": rank, "scale": 20.0, "dropout": 0.0})
    key = mx.random.key(seed + 1)
    n = 0
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            key, sub = mx.random.split(key)
            m.lora_b = 1e-3 * mx.random.normal(m.lora_b.shape, key=sub)
            n += 1
    mx.eval(model.parameters())
    return n


def make_batch(args, vocab: int):
    import numpy as np

    from tdpo_mlx.data import EncodedPair, make_batch

    rng = np.random.default_rng(args.seed)
    lo = min(10, vocab // 2)  # avoid special ids
    pairs = [
        EncodedPair(
            rng.integers(lo, vocab, args.prompt_len).tolist(),
            rng.integers(lo, vocab, args.response_len).tolist(),
            rng.integers(lo, vocab, args.response_len).tolist(),
            i,
        )
        for i in range(args.pairs)
    ]
    return make_batch(pairs)


def load_before(rev: str):
    """tdpo_mlx.fast_stats as of git revision ``rev``, imported as ``tdpo_mlx._fast_stats_before``
    (its relative imports resolve against today's package)."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:tdpo_mlx/fast_stats.py"], check=True, capture_output=True, text=True
    ).stdout
    name = "tdpo_mlx._fast_stats_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "tdpo_mlx"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:tdpo_mlx/fast_stats.py", "exec"), mod.__dict__)
    return mod


def body_flops_per_row(model, length: int, prefix: int = 0) -> float:
    """Forward FLOPs of the transformer body for one row of ``length`` tokens after ``prefix``
    cached ones: 2 in out per token for every linear layer of the blocks (LoRA included), plus
    causal attention (4 heads head_dim per attended key, sliding-window layers capped at their
    window)."""
    import mlx.nn as nn

    per_token = 0.0
    for _, m in (x for layer in model.model.layers for x in layer.named_modules()):
        if isinstance(m, (nn.Linear, nn.QuantizedLinear)):
            out_dim, in_dim = m.weight.shape
            if isinstance(m, nn.QuantizedLinear):
                in_dim = in_dim * 32 // m.bits
            per_token += 2.0 * in_dim * out_dim
        if hasattr(m, "lora_a"):
            r = m.lora_a.shape[1]
            per_token += 2.0 * r * (m.lora_a.shape[0] + m.lora_b.shape[1])
    attn = 0.0
    for layer in model.model.layers:
        a = layer.self_attn
        heads = getattr(a, "n_heads", None) or getattr(a, "num_attention_heads", 0)
        hd = getattr(a, "head_dim", None) or (a.q_proj.weight.shape[0] // max(heads, 1))
        window = getattr(model.model, "window_size", None) if getattr(a, "is_sliding", False) else None
        keys = sum(min(prefix + i + 1, window or (prefix + length)) for i in range(length))
        attn += 4.0 * heads * hd * keys
    return per_token * length + attn


def breakdown(model, batch, value_and_grad, opt, args) -> dict:
    """Time the parts of one fast training step separately (each evaluated on its own):
    policy body forward, reference body forward, LM-head/KL chunk loop (forward with its
    precomputed backward maps), the rest of value_and_grad (the bodies' backward), the
    optimizer; with FLOPs and the fraction of ``doctor``'s float32 matmul rate."""
    import time

    import mlx.core as mx

    from tdpo_mlx import cpu_head, cpu_step
    from tdpo_mlx import fast_stats as stats
    from tdpo_mlx.models import adapters_disabled
    from tdpo_mlx.shared_prompt import SharedLayout

    gflops = backend.matmul_gflops(1024, 5)["gflops"]
    kl_grad = "rejected" if args.loss_type == "tdpo2" else "all"
    plan = stats.statistics_plan(model, batch, chunk_size=args.chunk_size, kl_grad=kl_grad, numpy_head=True)
    pol, ref, inputs, targets, layout = plan.pol, plan.ref, plan.inputs, plan.targets, plan.inputs
    if isinstance(layout, SharedLayout):  # the prompt once: B prompt rows, then 2B response rows after them
        w = 0 if layout.prompt_inputs is None else layout.prompt_inputs.shape[1]
        r = layout.inputs.shape[1]
        body_fwd = batch.n_pairs * body_flops_per_row(model, w) + 2 * batch.n_pairs * body_flops_per_row(model, r, w)
    else:
        layout = None
        body_fwd = inputs.shape[0] * body_flops_per_row(model, inputs.shape[1])  # padded rows run whole
    n_rows = plan.mask.shape[0]
    weights = cpu_head.head_weight(pol), cpu_head.head_weight(ref)
    numpy_head = all(w is not None for w in weights) and stats.NUMPY_HEAD["on"]

    def timed(fn):
        mx.synchronize()
        t, cpu = time.perf_counter(), time.process_time()
        out = fn()
        mx.eval(out)
        return out, time.perf_counter() - t, time.process_time() - cpu

    h, t_pol, c_pol = timed(lambda: plan.run_body(pol.body, inputs))
    with adapters_disabled(model):
        hr, t_ref, c_ref = timed(lambda: plan.run_body(ref.body, inputs))
    if numpy_head:  # the trainer's CPU step (tdpo_mlx.cpu_step)
        _, t_head, c_head = timed(lambda: cpu_step.head_terms(plan, *weights, h, hr) and [])
    else:
        _, t_head, c_head = timed(lambda: stats.head_statistics(pol, ref, h, hr, targets, plan.groups, True)[:3])
    h = hr = None  # free the hidden states before the full step
    (loss, g), t_vg, c_vg = timed(lambda: value_and_grad(model))
    _, t_opt, c_opt = timed(lambda: (opt.update(model, g), model.parameters(), opt.state)[1:])

    p = int(mx.sum(batch.target_mask).item())
    p_kl = int(mx.sum(batch.target_mask[batch.n_pairs :]).item()) if kl_grad == "rejected" else p
    head_prod = 2.0 * p * pol.vocab * model.model.layers[0].input_layernorm.weight.shape[0]
    head_fwd = 2 * head_prod
    head_bwd = head_prod + head_prod * p_kl / p
    parts = {
        "policy_body_fwd": (t_pol, c_pol, body_fwd),
        "reference_body_fwd": (t_ref, c_ref, body_fwd),
        "head_kl_fwd_and_maps": (t_head, c_head, head_fwd + head_bwd),
        "body_backward_rest": (t_vg - t_pol - t_ref - t_head, c_vg - c_pol - c_ref - c_head, body_fwd),
        "optimizer": (t_opt, c_opt, 0.0),
    }
    total_t = t_vg + t_opt
    total_f = sum(v[2] for v in parts.values())
    shared = "prompt shared" if layout is not None else "prompt per row"
    kernel = "head in NumPy" if numpy_head else "head in MLX"
    print(
        f"breakdown of one fast step ({n_rows} rows, {shared}, {kernel}, {p} scored positions, "
        f"matmul {gflops:.0f} GFLOP/s):"
    )
    out = {}
    for k, (t, cpu, fl) in parts.items():
        frac = fl / 1e9 / gflops / t if t > 0 and fl else 0.0
        print(f"  {k:22s} {t:7.2f} s (CPU {cpu:7.2f} s) {fl / 1e12:6.3f} TFLOP  roofline {frac:5.1%}")
        out[k] = {"s": t, "cpu_s": cpu, "tflop": fl / 1e12, "roofline": frac}
    roof = total_f / 1e9 / gflops / total_t
    print(f"  {'total':22s} {total_t:7.2f} s            {total_f / 1e12:6.3f} TFLOP  roofline {roof:5.1%}")
    out["total"] = {"s": total_t, "tflop": total_f / 1e12, "roofline": roof, "matmul_gflops": gflops}
    return out


def real_data(args, model, name) -> int:
    """``--data``: N training steps over real pairs (the trainer's BatchIterator) and an evaluation
    of held-out pairs, per kind (fast, and ``before`` with ``--before``), side by side."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.utils import load_tokenizer

    from tdpo_mlx import fast_stats
    from tdpo_mlx.config import TrainConfig
    from tdpo_mlx.data import BatchIterator, eval_batches, load_train_eval
    from tdpo_mlx.data import make_batch as pad_batch
    from tdpo_mlx.gguf import resolve_model_path
    from tdpo_mlx.losses import preference_loss
    from tdpo_mlx.objective import accumulate_gradients
    from tdpo_mlx.shared_prompt import shared_layout
    from tdpo_mlx.stats import split_pairs

    tok = load_tokenizer(Path(resolve_model_path(args.model)))
    cfg = TrainConfig(model=args.model, data=args.data, max_length=args.max_length, batch_size=args.pairs)
    train_pairs, held = load_train_eval(cfg, tok, log=lambda *a: None)
    held = held[: args.eval_pairs]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    print(f"data: {args.data}: {len(train_pairs)} train pairs, {len(held)} held-out pairs evaluated")
    kl_grad = "rejected" if args.loss_type == "tdpo2" else "all"
    loss_kw = dict(loss_type=args.loss_type, beta=args.beta, alpha=args.alpha)
    default_cache = mx.set_cache_limit(0)
    mx.set_cache_limit(default_cache)
    share = {"kl_grad": kl_grad}
    kinds = {"fast": (fast_stats, share)}
    if args.rows:
        kinds["rows"] = (fast_stats, dict(share, share_prompt=False))
    if args.before:
        kinds["before"] = (load_before(args.before), {})
    result: dict = {"model": name, "data": args.data, "steps": args.steps, "pairs": args.pairs}
    for kind, (mod, kw) in kinds.items():
        mx.set_cache_limit(default_cache)
        if kind != "before":
            backend.set_buffer_cache_from_memory()
        eval_kw = {k: v for k, v in kw.items() if k == "share_prompt"}

        def loss_fn(m, b, mod=mod, kw=kw):
            s = mod.batch_statistics(m, b, **kw)
            return preference_loss(*split_pairs(s), args.loss_type, args.beta, args.alpha).losses.mean()

        vg = nn.value_and_grad(model, loss_fn)
        opt = optim.AdamW(learning_rate=0.0)  # parameters unchanged: both kinds see the same model
        it = BatchIterator(train_pairs, args.pairs, seed=args.seed, pad_id=pad_id)
        real = padded = prompt = saved = body = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            b = next(it)
            if kind == "before":
                loss, g = vg(model, b)
            else:  # the trainer's own step (the CPU step where it applies)
                res = accumulate_gradients(model, [b], **loss_kw, share_prompt=kw.get("share_prompt", True))
                loss, g = mx.array(res.loss), res.grads
            opt.update(model, g)
            mx.eval(loss, model.parameters(), opt.state)
            real += int(b.lengths.sum().item())
            padded += int(b.input_ids.size)
            prompt += int(b.prompt_lengths[: b.n_pairs].sum().item())
            layout = shared_layout(b) if kw.get("share_prompt", kind != "before") else None
            saved += layout.prompt_tokens_saved if layout is not None else 0
            if layout is None:
                body += b.input_ids.shape[0] * (b.input_ids.shape[1] - 1)
            else:
                w = 0 if layout.prompt_inputs is None else layout.prompt_inputs.size
                body += w + layout.inputs.size
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        batches = (
            eval_batches(held, args.pairs, pad_id)
            if kind != "before"
            else [pad_batch(held[i : i + args.pairs], pad_id) for i in range(0, len(held), args.pairs)]
        )
        e0, ec0 = time.perf_counter(), time.process_time()
        model.eval()
        for b in batches:
            s = mod.batch_statistics(model, b, differentiable=False, **eval_kw)
            mx.eval(preference_loss(*split_pairs(s), args.loss_type, args.beta, args.alpha).losses)
        model.train()
        edt, edc = time.perf_counter() - e0, time.process_time() - ec0
        pairs = args.steps * args.pairs
        r = {
            "train_s_per_step": dt / args.steps,
            "train_cpu_s_per_step": dc / args.steps,
            "real_tokens_per_s": real / dt,
            "real_tokens_per_cpu_s": real / dc,
            "padding_fraction": 1 - real / padded,
            "prompt_tokens": prompt,
            "prompt_share_of_body_tokens": prompt / real,
            "prompt_tokens_saved_by_sharing": saved,
            "body_positions_per_step": body / args.steps,
            "train_s_per_pair": dt / pairs,
            "eval_s_per_pair": edt / max(len(held), 1),
            "eval_cpu_s_per_pair": edc / max(len(held), 1),
        }
        r["eval_over_train_per_pair"] = r["eval_s_per_pair"] / r["train_s_per_pair"]
        result[kind] = r
        print(
            f"{kind:6s}: {r['train_s_per_step']:.2f} s/step (CPU {r['train_cpu_s_per_step']:.2f}), "
            f"{r['real_tokens_per_s']:.1f} real tokens/s, padding {r['padding_fraction']:.1%}, "
            f"prompt tokens {prompt} ({r['prompt_share_of_body_tokens']:.0%} of real tokens), "
            f"{saved} not computed twice, {body / args.steps:.0f} body positions/step, eval {r['eval_s_per_pair']:.2f} s/pair (CPU {r['eval_cpu_s_per_pair']:.2f}) = "
            f"{r['eval_over_train_per_pair']:.2f}x train s/pair",
            flush=True,
        )
    if "rows" in result:
        result["shared_over_rows_tokens_per_s"] = (
            result["fast"]["real_tokens_per_s"] / result["rows"]["real_tokens_per_s"]
        )
        print(f"fast/rows real tokens/s (prompt shared / per row): {result['shared_over_rows_tokens_per_s']:.2f}x")
    if "before" in result:
        result["real_tokens_per_s_ratio"] = result["fast"]["real_tokens_per_s"] / result["before"]["real_tokens_per_s"]
        result["real_tokens_per_cpu_s_ratio"] = (
            result["fast"]["real_tokens_per_cpu_s"] / result["before"]["real_tokens_per_cpu_s"]
        )
        print(
            f"fast/before real tokens/s: {result['real_tokens_per_s_ratio']:.2f}x "
            f"(per CPU second {result['real_tokens_per_cpu_s_ratio']:.2f}x)"
        )
    print(json.dumps(result))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from tdpo_mlx import cpu_head, cpu_step
    from tdpo_mlx import fast_stats as stats
    from tdpo_mlx.losses import preference_loss
    from tdpo_mlx.stats import split_pairs

    default_cache = mx.set_cache_limit(0)
    mx.set_cache_limit(default_cache)
    cache = backend.set_buffer_cache_from_memory() or default_cache
    print(f"buffer cache: {cache / 2**30:.2f} GiB (MLX default {default_cache / 2**30:.2f} GiB)")
    print(f"device: {backend.device_info()}")
    print(f"BLAS: {backend.blas_info()['note']}")
    model, name, dtype = load_model(args)
    if args.grad_checkpoint:
        stats.enable_grad_checkpoint(model)
    n_lora = attach_lora(model, args.lora_rank, args.seed)
    if args.data:
        return real_data(args, model, name)
    vocab = stats.find_head_plan(model).vocab
    batch = make_batch(args, vocab)
    n_tok = 2 * args.pairs * (args.prompt_len + args.response_len)
    print(f"model: {name}, dtype {dtype}, vocab {vocab}, {n_lora} LoRA layers of rank {args.lora_rank}")
    print(
        f"batch: {args.pairs} pairs x (prompt {args.prompt_len} + response {args.response_len}) "
        f"= {n_tok} tokens per step, loss {args.loss_type}"
    )

    kl_grad = "rejected" if args.loss_type == "tdpo2" else "all"

    def loss_fn(fast, share=True):
        def f(m):
            s = stats.batch_statistics(
                m, batch, fast=fast, chunk_size=args.chunk_size, kl_grad=kl_grad, share_prompt=share
            )
            ch, rj = split_pairs(s)
            return preference_loss(ch, rj, args.loss_type, args.beta, args.alpha).losses.mean()

        return f

    def loss_of_stats(s):
        ch, rj = split_pairs(s)
        return preference_loss(ch, rj, args.loss_type, args.beta, args.alpha).losses.mean()

    def trainer_vg(share):  # what the trainer runs: the CPU step where it applies, else traced
        traced = nn.value_and_grad(model, loss_fn(True, share))

        def vg(m):
            kw = dict(kl_grad=kl_grad, share_prompt=share, chunk_size=args.chunk_size)
            return cpu_step.value_and_grad(m, batch, loss_of_stats, **kw) or traced(m)

        return vg

    vg = {"plain": nn.value_and_grad(model, loss_fn(False)), "fast": trainer_vg(True), "rows": trainer_vg(False)}
    vg["mlxhead"] = nn.value_and_grad(model, loss_fn(True))
    if args.before:
        old = load_before(args.before)

        def before_loss(m):
            s = old.batch_statistics(m, batch, fast=True, chunk_size=args.chunk_size)
            ch, rj = split_pairs(s)
            return preference_loss(ch, rj, args.loss_type, args.beta, args.alpha).losses.mean()

        vg["before"] = nn.value_and_grad(model, before_loss)
    opt = optim.AdamW(learning_rate=1e-6)

    # --- parity on identical parameters (also the untimed warm-up of each kind) ---
    kinds = ["plain", "fast"] if args.only == "both" else [args.only]
    if args.rows:
        kinds.append("rows")
    if args.mlx_head:
        kinds.append("mlxhead")
    if args.before:
        kinds.append("before")
    result: dict = {}
    if args.only == "both":
        sp = stats.batch_statistics(model, batch, fast=False)
        sf = stats.batch_statistics(model, batch, fast=True, chunk_size=args.chunk_size)
        mx.eval(sp, sf)
        rel = {}
        for f_name in ("logps", "ref_logps", "logratio", "kl"):
            a, b = getattr(sp, f_name), getattr(sf, f_name)
            rel[f_name] = mx.max(mx.abs(a - b)).item() / max(mx.max(mx.abs(a)).item(), 1e-12)
        del sp, sf
        grads = {}
        for k in kinds:
            loss, g = vg[k](model)
            mx.eval(loss, g)
            grads[k] = (loss.item(), dict(tree_flatten(g)))
        gp, gf = grads["plain"][1], grads["fast"][1]
        grad_rel = max(mx.max(mx.abs(gp[k] - gf[k])).item() / max(mx.max(mx.abs(gp[k])).item(), 1e-30) for k in gp)
        grad_norm_rel = (
            sum(mx.sum((gp[k] - gf[k]) ** 2).item() for k in gp)
            / max(sum(mx.sum(gp[k] ** 2).item() for k in gp), 1e-30)
        ) ** 0.5
        result["grad_norm_rel_diff"] = grad_norm_rel  # ||g_fast - g_plain|| / ||g_plain|| over all LoRA params
        result.update(
            max_rel_diff=max(rel.values()),
            rel_diff=rel,
            max_grad_rel_diff=grad_rel,
            plain_loss=grads["plain"][0],
            fast_loss=grads["fast"][0],
        )
        print(
            f"parity: stats max rel diff {result['max_rel_diff']:.2e} {rel}; "
            f"grad max rel diff {grad_rel:.2e} (per parameter), {grad_norm_rel:.2e} (norm); loss plain {grads['plain'][0]:.6f} fast {grads['fast'][0]:.6f}"
        )
        del grads, gp, gf
    else:
        for k in kinds:
            loss, g = vg[k](model)
            mx.eval(loss, g)
    if not args.no_breakdown:
        result["breakdown"] = breakdown(model, batch, vg["fast"], opt, args)

    def step(kind):
        mx.set_cache_limit(default_cache if kind == "before" else cache)
        mx.clear_cache()
        mx.reset_peak_memory()
        t, c = time.perf_counter(), time.process_time()
        loss, g = vg[kind](model)
        opt.update(model, g)
        mx.eval(loss, model.parameters(), opt.state)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        extra = cpu_head.WORKSPACE.nbytes if kind in ("fast", "rows") else 0  # NumPy's head buffers
        return dt, dc, (mx.get_peak_memory() + extra) / 1e9

    times = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    peaks = {k: [] for k in kinds}
    for i in range(args.steps):
        order = kinds if i % 2 == 0 else kinds[::-1]
        for k in order:
            dt, dc, pk = step(k)
            times[k].append(dt)
            cpu[k].append(dc)
            peaks[k].append(pk)
            print(f"step {i} {k:5s} {dt:8.2f} s  (process CPU {dc:8.2f} s)  peak {pk:6.2f} GB", flush=True)

    for k in kinds:
        med = statistics.median(times[k])
        result[f"{k}_step_s"] = med
        result[f"{k}_peak_gb"] = max(peaks[k])
        result[f"{k}_tokens_per_s"] = n_tok / med
        result[f"{k}_cpu_s"] = statistics.median(cpu[k])  # less sensitive to other processes
        print(f"{k:5s}: median {med:.2f} s/step, {n_tok / med:.1f} tokens/s, peak {max(peaks[k]):.2f} GB")
    if "rows" in kinds and "fast" in kinds:
        result["fast_over_rows"] = result["fast_step_s"] / result["rows_step_s"]
        print(f"fast/rows (prompt shared / computed per row): step time {result['fast_over_rows']:.3f}x")
    if "mlxhead" in kinds and "fast" in kinds:
        result["fast_over_mlxhead"] = result["fast_step_s"] / result["mlxhead_step_s"]
        print(f"fast/mlxhead (NumPy / MLX head kernel): step time {result['fast_over_mlxhead']:.3f}x")
    if "before" in kinds:
        result["fast_over_before"] = result["fast_step_s"] / result["before_step_s"]
        print(f"fast/before: step time {result['fast_over_before']:.3f}x")
    if args.only == "both":
        result["step_ratio"] = result["fast_step_s"] / result["plain_step_s"]
        result["memory_ratio"] = result["fast_peak_gb"] / result["plain_peak_gb"]
        result["cpu_ratio"] = result["fast_cpu_s"] / result["plain_cpu_s"]
        print(f"fast/plain: step time {result['step_ratio']:.3f}x, peak memory {result['memory_ratio']:.3f}x")
    result.update(
        model=name,
        pairs=args.pairs,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        steps=args.steps,
        tokens_per_step=n_tok,
        lora_rank=args.lora_rank,
        loss_type=args.loss_type,
        dtype=str(dtype).replace("mlx.core.", ""),
        blas=backend.blas_info()["kind"],
        grad_checkpoint=args.grad_checkpoint,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
