"""The demo's settings: :class:`DemoConfig` (controlled sentiment, Zeng et al. 2024 Sec. 5.1) and
:class:`HHConfig` (Anthropic HH, Sec. 5.2 / Table 1), their presets, and the up-front time
estimate of a run (:func:`estimate`)."""

from __future__ import annotations

import dataclasses
import pathlib

METHODS = ("dpo", "tdpo1", "tdpo2")
OPENERS = pathlib.Path(__file__).parents[1] / "resources" / "imdb_openers.txt"
HH_DATA = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"

# Seconds of idle 2-core wall time per unit of work (AMD EPYC, MLX CPU + MKL, Gemma 3 270M), from
# the measured quick runs (CPU seconds / 1.7, the parallel speed-up of 2 busy cores). They only
# feed the estimate printed before a run; tokens are prompt + response positions.
COST = {
    "load": 12.0,  # load the model (per training run and once for evaluation)
    "sample_token": 0.029,  # one generated token of a batched reference sample
    "train_token": 0.036,  # one pair-token of a training step (chosen + rejected, policy + reference)
    "heldout_token": 0.012,  # one pair-token of a held-out evaluation (no gradient)
    "eval_token": 0.043,  # one generated token of an evaluation sample, scored under policy and reference
}


def variant_name(method: str, alpha: float | None) -> str:
    """Run name of a method (TDPO2 carries its alpha: ``tdpo2-a0.5``)."""
    return method if alpha is None else f"{method}-a{alpha:g}"


@dataclasses.dataclass
class _Common:
    """Settings shared by both experiments."""

    model: str = "gemma3-270m"
    seeds: tuple = (0, 1)  # one training run per seed; seeds[0] also splits the data
    methods: tuple = METHODS
    tdpo2_alphas: tuple = (0.5,)  # TDPO2 is trained once per alpha
    iters: int = 30
    batch_size: int = 4
    lr: float = 1e-4  # RMSprop on LoRA: 5e-4 blew the KL up to >100 nats within 8 steps
    warmup_steps: int = 5
    lora_rank: int = 8
    lora_alpha: float = 16.0
    beta: float = 0.1
    max_length: int = 96
    max_prompt_length: int = 48
    steps_per_report: int = 2
    temp: float = 1.0
    top_p: float = 1.0
    gen_batch_size: int = 128  # decoding is per-op bound on CPU: big batches are ~3x cheaper per token
    eval_samples_per_prompt: int = 2
    eval_max_tokens: int = 32
    score_batch_size: int = 16

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def eval_sampling(self, seed: int) -> dict:
        """:func:`tdpo_mlx.generation.generate_samples` settings of the evaluation samples of a run
        with ``seed`` (the reference uses the first seed's)."""
        return dict(
            samples_per_prompt=self.eval_samples_per_prompt,
            max_tokens=self.eval_max_tokens,
            temp=self.temp,
            top_p=self.top_p,
            seed=seed + 12345,
            batch_size=self.gen_batch_size,
        )

    def variants(self) -> list[tuple[str, str, float | None]]:
        """(name, loss, TDPO2 alpha or None) of every trained variant, in report order."""
        out = []
        for m in self.methods:
            if m == "tdpo2":
                out += [(variant_name(m, a), m, float(a)) for a in self.tdpo2_alphas]
            else:
                out.append((m, m, None))
        return out


@dataclasses.dataclass
class DemoConfig(_Common):
    """The controlled-sentiment experiment (``tdpo-mlx demo``): reward against KL along training."""

    n_train_prompts: int = 160
    n_eval_prompts: int = 48
    samples_per_prompt: int = 4
    gen_max_tokens: int = 32
    min_reward_gap: float = 0.2
    heldout_fraction: float = 0.15  # of the pairs, scored during training (held-out accuracy)
    tdpo2_alphas: tuple = (0.1, 0.5, 0.7)
    eval_points: int = 5  # checkpoints evaluated per run, evenly spaced, the last one final

    def save_every(self) -> int:
        return max(1, self.iters // self.eval_points)

    def eval_steps(self) -> list[int]:
        """Training steps whose adapters are evaluated on the held-out prompts."""
        k = self.save_every()
        return sorted(set(range(k, self.iters, k)) | {self.iters})


@dataclasses.dataclass
class HHConfig(_Common):
    """The Anthropic-HH experiment (``tdpo-mlx demo --experiment hh``): preference accuracy on
    held-out pairs and entropy of generated replies, after equal budgets (paper Table 1)."""

    model: str = "smollm2-135m-instruct"  # an instruct model, as the paper's HH runs tune an SFT model
    data: str = HH_DATA
    chat: bool = True  # the HH dialogues as messages in the model's chat template (tdpo_mlx.data.hh)
    n_train_pairs: int = 480
    n_heldout_pairs: int = 96
    n_eval_prompts: int = 48
    iters: int = 40
    batch_size: int = 2
    lr: float = 1e-4
    max_length: int = 192
    max_prompt_length: int = 96
    eval_samples_per_prompt: int = 1
    eval_max_tokens: int = 48
    score_batch_size: int = 8
    gen_batch_size: int = 48


QUICK = DemoConfig(
    seeds=(0,),
    n_train_prompts=32,
    n_eval_prompts=8,
    gen_max_tokens=20,
    gen_batch_size=160,
    tdpo2_alphas=(0.5,),
    iters=9,
    lr=1.5e-4,
    warmup_steps=2,
    steps_per_report=1,
    eval_points=3,
    eval_samples_per_prompt=2,
    eval_max_tokens=20,
)
FULL = DemoConfig(
    n_train_prompts=100, n_eval_prompts=12, gen_max_tokens=20, iters=15, lr=1.5e-4, eval_points=5, eval_max_tokens=20
)
HH_QUICK = HHConfig(
    seeds=(0,),
    n_train_pairs=12,
    n_heldout_pairs=16,
    n_eval_prompts=8,
    iters=6,
    warmup_steps=2,
    max_length=112,
    max_prompt_length=64,
    steps_per_report=1,
    eval_max_tokens=32,
)
HH_FULL = HHConfig(
    n_train_pairs=32, n_heldout_pairs=48, n_eval_prompts=24, iters=16, max_length=128, max_prompt_length=64
)


#: Cost of a model relative to Gemma 3 270M (:data:`COST`): the HH quick preset on SmolLM2-135M-Instruct
#: took 300.6 s where the Gemma-calibrated estimate said 8 min.
MODEL_COST = {"smollm2-135m-instruct": 0.6}


def estimate(cfg: _Common) -> list[tuple[str, float]]:
    """(stage, estimated idle-machine seconds) of a run with ``cfg``, from :data:`COST` scaled by
    :data:`MODEL_COST` (1 for other models)."""
    scale = MODEL_COST.get(cfg.model, 1.0)
    return [(stage, seconds * scale) for stage, seconds in _gemma_estimate(cfg)]


def _gemma_estimate(cfg: _Common) -> list[tuple[str, float]]:
    c = COST
    runs = len(cfg.variants()) * len(cfg.seeds)
    if isinstance(cfg, HHConfig):
        pair_tok = 2 * cfg.max_length * 0.8  # HH pairs mostly fill the length budget
        gen_tok = cfg.max_prompt_length + cfg.eval_max_tokens
        evals = runs + 1
        return [
            ("model + data", c["load"] + 5.0),
            (
                f"train {runs} runs x {cfg.iters} steps",
                runs * (c["load"] + cfg.iters * cfg.batch_size * pair_tok * c["train_token"]),
            ),
            (
                f"held-out accuracy ({cfg.n_heldout_pairs} pairs x {runs})",
                runs * cfg.n_heldout_pairs * pair_tok * c["heldout_token"],
            ),
            (
                f"entropy/KL ({cfg.n_eval_prompts} prompts x {evals})",
                c["load"] + evals * cfg.n_eval_prompts * cfg.eval_samples_per_prompt * gen_tok * c["eval_token"] / 2,
            ),
        ]
    prompt_tok = 12
    pair_tok = 2 * (prompt_tok + cfg.gen_max_tokens)
    n_pairs = cfg.n_train_prompts  # at most
    points = runs * len(cfg.eval_steps()) + 1
    return [
        ("model", c["load"]),
        (
            f"samples ({cfg.samples_per_prompt} x {cfg.n_train_prompts} prompts)",
            cfg.samples_per_prompt * cfg.n_train_prompts * cfg.gen_max_tokens * c["sample_token"],
        ),
        (
            f"train {runs} runs x {cfg.iters} steps",
            runs
            * (
                c["load"]
                + cfg.iters * cfg.batch_size * pair_tok * c["train_token"]
                + (len(cfg.eval_steps()) + 1) * n_pairs * cfg.heldout_fraction * pair_tok * c["heldout_token"]
            ),
        ),
        (
            f"eval {points} points x {cfg.n_eval_prompts * cfg.eval_samples_per_prompt} samples",
            c["load"]
            + points * cfg.n_eval_prompts * cfg.eval_samples_per_prompt * cfg.eval_max_tokens * c["eval_token"],
        ),
    ]
