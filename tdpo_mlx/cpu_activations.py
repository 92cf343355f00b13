"""The MLP activations of Gemma 3 (tanh-approximated GELU) and Llama/Qwen2 (SiLU) in cheaper
elementwise ops, for the CPU backend.

On the CPU backend MLX's transcendental kernels run on one core without SIMD: measured on our
2-core x86 machines over a (1536, 2048) activation, ``nn.gelu_approx`` took 32 ns an element
forward and 47 ns for its gradient, ``mx.tanh`` 17 ns and ``mx.sigmoid`` 16 ns, against 0.3 ns
for an add. In Gemma 3 270M the GELU ran on 3 M elements per block per pass, about a fifth of a
body pass. Here tanh is Eigen's float32 rational approximation (odd degree-13 numerator over
degree-6 denominator in u^2, clamped at |u| = 7.9053, max abs error 3.6e-7 against
``mx.tanh``) in ~20 plain elementwise ops (5.8 ns an element), and both activations have a
closed-form VJP from the same tanh: d gelu/dx = (1 + t)/2 + x (1 - t^2) k (1 + 3 c x^2) / 2
with t = tanh(k (x + c x^3)), k = sqrt(2/pi), c = 0.044715; sigmoid(x) = (1 + tanh(x/2)) / 2 and
d silu/dx = s (1 + x (1 - s)).

:func:`install` switches a model's MLP blocks of the known classes to these on the CPU backend
(the parameters and their names stay); Metal and CUDA keep mlx-lm's modules.
"""

from __future__ import annotations

import math

import mlx.core as mx
from mlx_lm.models import gemma3_text, llama, qwen2

from .backend import is_cpu_backend

_K = math.sqrt(2.0 / math.pi)
_C = 0.044715
_CLAMP = 7.90531110763549805
_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
      1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)  # fmt: skip
_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def tanh(u: mx.array) -> mx.array:
    """tanh(u) for float32 arrays from a rational function (see the module notes)."""
    u = mx.clip(u, -_CLAMP, _CLAMP)
    u2 = u * u
    p = u2 * _P[0] + _P[1]
    for c in _P[2:]:
        p = p * u2 + c
    q = u2 * _Q[0] + _Q[1]
    for c in _Q[2:]:
        q = q * u2 + c
    return u * p / q


@mx.custom_function
def gelu_approx(x: mx.array) -> mx.array:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): ``mlx.nn.gelu_approx``'s formula."""
    return 0.5 * x * (1.0 + tanh(_K * (x + _C * x * x * x)))


@gelu_approx.vjp
def _gelu_vjp(primals, cotangent, output):
    x = primals  # one input: the array itself
    x2 = x * x
    t = tanh(_K * x * (1.0 + _C * x2))
    return (cotangent * (0.5 * (1.0 + t) + 0.5 * _K * x * (1.0 - t * t) * (1.0 + 3.0 * _C * x2)),)


@mx.custom_function
def silu(x: mx.array) -> mx.array:
    """x sigmoid(x): ``mlx.nn.silu``."""
    return x * (0.5 + 0.5 * tanh(0.5 * x))


@silu.vjp
def _silu_vjp(primals, cotangent, output):
    x = primals  # one input: the array itself
    s = 0.5 + 0.5 * tanh(0.5 * x)
    return (cotangent * (s * (1.0 + x * (1.0 - s))),)


class _GemmaMLP(gemma3_text.MLP):
    def __call__(self, x):
        return self.down_proj(gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class _LlamaMLP(llama.MLP):
    def __call__(self, x):
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))


class _Qwen2MLP(qwen2.MLP):
    def __call__(self, x):
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))


_SWITCH = {gemma3_text.MLP: _GemmaMLP, llama.MLP: _LlamaMLP, qwen2.MLP: _Qwen2MLP}


def install(model) -> int:
    """On the CPU backend, run the MLP blocks of ``model`` whose class is Gemma 3's, Llama's or
    Qwen2's with :func:`gelu_approx` / :func:`silu` above; returns how many were switched (0
    elsewhere). Same parameters, same outputs within float32 rounding."""
    if not is_cpu_backend():
        return 0
    n = 0
    for _, module in model.named_modules():
        cls = _SWITCH.get(type(module))
        if cls is not None:
            module.__class__ = cls
            n += 1
    return n
