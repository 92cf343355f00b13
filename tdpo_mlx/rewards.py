"""Reward functions for evaluation and for building preference pairs.

A reward function scores completions: ``fn(prompts: list[str], completions: list[str]) ->
sequence of float`` (one finite float per completion, higher is better).

Specs accepted by :func:`load_reward`:

- ``sentiment``: the VADER compound score (Hutto & Gilbert, 2014) of ``prompt + completion``,
  in [-1, 1]; the controlled-sentiment task of the TDPO paper (Sec. 5.1, IMDb) asks for
  positive reviews, so higher is more positive. Needs ``vaderSentiment``.
- ``module:function``: any importable callable, e.g. ``my_rewards:toxicity``.
- ``path/to/file.py:function``: a callable defined in a Python file.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import pathlib
import sys
from collections.abc import Callable, Sequence

from .errors import UserError

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

BUILTIN_REWARDS = ("sentiment",)


class RewardSpecError(UserError):
    """A reward spec that cannot be turned into a callable; the message says how to fix it."""


_VADER = None


def sentiment_reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each full review ``prompt + completion``, in [-1, 1].

    Args:
        prompts: N prompt strings (review openers).
        completions: N completion strings (the model's continuations).

    Returns:
        N floats; +1 most positive, -1 most negative, 0 neutral.

    Raises:
        ImportError: if ``vaderSentiment`` is not installed (``pip install vaderSentiment``).
    """
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the 'sentiment' reward needs vaderSentiment: pip install vaderSentiment "
                "(or pip install 'tdpo-mlx[demo]')"
            ) from e
        _VADER = SentimentIntensityAnalyzer()
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [float(_VADER.polarity_scores(p + c)["compound"]) for p, c in zip(prompts, completions)]


def load_reward(spec: str) -> RewardFn:
    """Turn a reward spec into a checked callable ``fn(prompts, completions) -> list[float]``.

    Args:
        spec: ``"sentiment"``, ``"module:function"`` or ``"file.py:function"``.

    Returns:
        A callable that calls the user's function and checks its output (one finite float per
        completion), raising ``ValueError`` naming the spec otherwise.

    Raises:
        RewardSpecError: the spec has no colon, the module or file cannot be imported, the
            attribute is missing, or it is not callable. The message names the spec and the fix.
    """
    spec = (spec or "").strip()
    if spec == "sentiment":
        return _checked(sentiment_reward, spec)
    if ":" not in spec:
        raise RewardSpecError(
            f"reward {spec!r}: expected one of {', '.join(BUILTIN_REWARDS)} or 'module:function' "
            "(e.g. 'my_rewards:score', or 'path/to/file.py:score')"
        )
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise RewardSpecError(
            f"reward {spec!r}: both the module and the function name are needed, as 'module:function'"
        )
    module = _import(module_name, spec)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardSpecError(
                f"reward {spec!r}: module {module_name!r} has no attribute {attr!r} "
                f"(define 'def {part}(prompts, completions): ...' there)"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardSpecError(
            f"reward {spec!r}: {attr!r} is a {type(obj).__name__}, not a function; it must be "
            "callable as fn(prompts: list[str], completions: list[str]) -> list[float]"
        )
    return _checked(obj, spec)


def _import(module_name: str, spec: str):
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        if not path.is_file():
            raise RewardSpecError(f"reward {spec!r}: file {str(path)!r} not found")
        name = f"_tdpo_reward_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise RewardSpecError(f"reward {spec!r}: importing {str(path)!r} failed: {e!r}") from e
        sys.modules[name] = module
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise RewardSpecError(
            f"reward {spec!r}: cannot import module {module_name!r} ({e}); make it importable "
            "(on PYTHONPATH or installed) or give a file path 'path/to/file.py:function'"
        ) from e


def _checked(fn, spec: str) -> RewardFn:
    def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        out = fn(list(prompts), list(completions))
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as e:
            raise RewardSpecError(f"reward {spec!r} must return a sequence of floats, got {type(out).__name__}") from e
        if len(values) != len(completions):
            raise RewardSpecError(f"reward {spec!r} returned {len(values)} values for {len(completions)} completions")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise RewardSpecError(f"reward {spec!r} returned non-finite values at positions {bad[:5]}")
        return values

    reward.spec = spec
    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward
