"""Sampling completions from a policy: prompts in, :class:`Sample` records out.

Generation uses mlx-lm's :class:`mlx_lm.generate.BatchGenerator` and
:func:`mlx_lm.sample_utils.make_sampler`; prompts come from a text or JSON-lines file
(:func:`read_prompts`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_sampler
from tqdm.auto import tqdm

from .errors import UserError


@dataclasses.dataclass
class Sample:
    """One sampled completion.

    Fields:
        prompt_index: index of the prompt in the list given to :func:`generate_samples`.
        sample_index: 0..samples_per_prompt-1.
        prompt: the prompt text.
        completion: decoded completion text (without the end-of-sequence token).
        prompt_ids: token ids of the prompt as fed to the model (BOS included if the tokenizer adds it).
        completion_ids: generated token ids, including the end-of-sequence token when one was sampled.
        finished: True when generation stopped at an end-of-sequence token (not at max_tokens).
    """

    prompt_index: int
    sample_index: int
    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]
    finished: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Sample:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (off when not ``enabled``) for generation and scoring loops."""
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt with the tokenizer's default special tokens (BOS for Gemma).

    Raises:
        ValueError: for an empty prompt list or a prompt that encodes to no tokens.
    """
    if not prompts:
        raise ValueError("no prompts given")
    ids = [list(tokenizer.encode(p)) for p in prompts]
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens")
    return ids


def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_tokens: int = 32,
    temp: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[Sample]:
    """Sample ``samples_per_prompt`` completions for every prompt, batched.

    Args:
        model: an mlx-lm model (adapters, if any, are used as attached).
        tokenizer: its mlx-lm ``TokenizerWrapper`` (needs ``encode``, ``decode``, ``eos_token_ids``).
        prompts: P prompt texts, fed as raw text (no chat template).
        samples_per_prompt: K completions per prompt.
        max_tokens: at most this many new tokens per completion.
        temp: sampling temperature; 0 is greedy.
        top_p: nucleus sampling mass; 1.0 (or 0) disables it.
        seed: seeds ``mx.random`` once before sampling, so a call is reproducible.
        batch_size: sequences decoded together.

    Returns:
        P*K :class:`Sample` in order (prompt 0 sample 0, prompt 0 sample 1, ...).
    """
    if samples_per_prompt < 1 or max_tokens < 1 or batch_size < 1:
        raise ValueError("samples_per_prompt, max_tokens and batch_size must be >= 1")
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos = sorted(set(int(t) for t in tokenizer.eos_token_ids))
    sampler = make_sampler(temp=float(temp), top_p=float(top_p) if 0 < top_p < 1 else 0.0)
    jobs = [(i, k) for i in range(len(prompts)) for k in range(samples_per_prompt)]
    mx.random.seed(seed)
    out: list[Sample] = []
    bar = progress_bar(len(jobs), desc, progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        decoded = _decode_batch(model, [prompt_ids[i] for i, _ in chunk], max_tokens, eos, sampler)
        for (i, k), (ids, reason) in zip(chunk, decoded):
            finished = bool(ids) and ids[-1] in eos and reason == "stop"
            text_ids = ids[:-1] if finished else ids
            out.append(Sample(i, k, prompts[i], tokenizer.decode(text_ids), prompt_ids[i], ids, finished))
        bar.update(len(chunk))
    bar.close()
    return out


def _decode_batch(model, prompts: list[list[int]], max_tokens: int, eos: list[int], sampler):
    """(generated ids, finish reason) per prompt, decoded together by mlx-lm's BatchGenerator."""
    gen = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=[[t] for t in eos],
        sampler=sampler,
        completion_batch_size=len(prompts),
        prefill_batch_size=len(prompts),
    )
    try:
        uids = gen.insert(prompts, [max_tokens] * len(prompts))
        tokens = {u: [] for u in uids}
        reason = {u: None for u in uids}
        while responses := gen.next_generated():
            for r in responses:
                tokens[r.uid].append(int(r.token))
                if r.finish_reason is not None:
                    reason[r.uid] = r.finish_reason
    finally:
        gen.close()
    return [(tokens[u], reason[u]) for u in uids]


def chat_prompts(tokenizer, prompts: Sequence[str], system: str | None = None) -> list[str]:
    """Each prompt as one user turn (after an optional ``system`` message) rendered with the
    tokenizer's chat template, the assistant header appended (``add_generation_prompt``).

    A BOS the template writes is dropped when the tokenizer's own ``encode`` adds one (Gemma), so
    the encoded prompt holds BOS once. Raises UserError (a ValueError) when the tokenizer has no
    chat template.
    """
    tok = tokenizer  # a transformers tokenizer, or mlx-lm's TokenizerWrapper (forwards these attributes)
    if not getattr(tok, "chat_template", None):
        raise UserError("--chat needs a chat template, but the model's tokenizer has none (a base model?)")
    bos = tok.bos_token
    adds_bos = bos is not None and list(tok.encode("a"))[:1] == [tok.bos_token_id]
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out.append(text[len(bos) :] if adds_bos and text.startswith(bos) else text)
    return out


def read_prompts(path) -> list[str]:
    """Prompts from a file: ``.jsonl``/``.json`` lines with a ``prompt`` string, else one per line.

    Blank lines are skipped. Raises ``ValueError`` naming the file and line for a bad record, and
    when the file holds no prompt.
    """
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    prompts = []
    as_json = path.suffix in (".jsonl", ".json")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if as_json:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f'{path}:{n}: not valid JSON ({e.msg}); expected {{"prompt": "..."}}') from e
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise UserError(f"{path}:{n}: expected an object with a string 'prompt' field")
            prompts.append(rec["prompt"])
        else:
            prompts.append(line.rstrip("\r"))
    if not prompts:
        raise UserError(f"{path}: no prompts found (one per line, or JSON lines with a 'prompt' field)")
    return prompts
