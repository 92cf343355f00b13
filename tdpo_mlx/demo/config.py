"""The demo's settings: :class:`DemoConfig` and its presets :data:`QUICK` and :data:`FULL`."""

from __future__ import annotations

import dataclasses
import pathlib

METHODS = ("dpo", "tdpo1", "tdpo2")
OPENERS = pathlib.Path(__file__).parents[1] / "resources" / "imdb_openers.txt"


@dataclasses.dataclass
class DemoConfig:
    """Every knob of the demo (the ``--quick`` and default presets are below)."""

    model: str = "gemma3-270m"
    seed: int = 0
    # prompts and preference data
    n_train_prompts: int = 160
    n_eval_prompts: int = 48
    samples_per_prompt: int = 4
    gen_max_tokens: int = 32
    temp: float = 1.0
    top_p: float = 1.0
    min_reward_gap: float = 0.2
    gen_batch_size: int = 128  # decoding is per-op bound on CPU: big batches are ~3x cheaper per token
    # training (same budget for every method)
    methods: tuple = METHODS
    iters: int = 60
    batch_size: int = 4
    lr: float = 1e-4  # RMSprop on LoRA: 5e-4 blew the KL up to >100 nats within 8 steps
    warmup_steps: int = 5
    lora_rank: int = 8
    lora_alpha: float = 16.0
    beta: float = 0.1
    alpha: float = 0.5
    max_length: int = 96
    max_prompt_length: int = 48
    save_every: int = 20
    steps_per_report: int = 2
    # evaluation
    eval_samples_per_prompt: int = 2
    eval_max_tokens: int = 32
    score_batch_size: int = 16
    eval_checkpoints: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        return d


QUICK = DemoConfig(
    n_train_prompts=40,
    n_eval_prompts=16,
    samples_per_prompt=4,
    gen_max_tokens=20,
    gen_batch_size=160,
    iters=14,
    batch_size=4,
    lr=1.5e-4,
    warmup_steps=2,
    save_every=0,
    steps_per_report=1,
    eval_samples_per_prompt=3,
    eval_max_tokens=20,
    eval_checkpoints=False,
)
FULL = DemoConfig()
