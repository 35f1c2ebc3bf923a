"""GELU, tanh approximation (GPT-2's "gelu_new"), elementwise.

    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))

    x [n, F] -> y [n, F]            computed in float32, stored in dtype

On the CPU the model builds it with tanh as a ratio of polynomials (tanh_rational), not T.tanh: see there why.
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# tanh_rational's coefficients: Eigen's float32 tanh (MathFunctionsImpl.h), which TVM's topi.fast_tanh uses too.
# Odd numerator, even denominator, in powers of z^2, lowest first.
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_CLAMP = 9.0                # |z| >= 9: tanh(z) rounds to +-1 in float32


def _horner(coefficients, z2):
    """c0 + c1 z2 + c2 z2^2 + ... as a float32 PrimExpr, evaluated from the highest term down."""
    acc = T.float32(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * z2 + T.float32(c)
    return acc


def tanh_rational(z):
    """tanh(z) = z P(z^2) / Q(z^2) on a float32 PrimExpr, z clamped to [-9, 9]: within 4e-7 of tanh
    (checked in numpy over [-20, 20]; tests/test_kernels.py checks GELU built with it against gelu_ref).

    Why not T.tanh on the CPU: LLVM lowers tanh through exp, and with no vector math library it turns the
    exp of a 16-lane vector into 16 calls to libm's expf. GELU after gpt2's c_fc at 128 tokens then takes
    ~2.8 ms alone (2-core znver4 here), most of the fused linear_fc_gelu's extra time over the plain
    linear. Multiplies, adds, a min, a max and one division vectorize."""
    z = T.max(T.min(z, T.float32(TANH_CLAMP)), T.float32(-TANH_CLAMP))
    z2 = z * z
    return z * _horner(_TANH_P, z2) / _horner(_TANH_Q, z2)


def gelu_expr(x, rational_tanh: bool = False):
    """The formula on a float32 PrimExpr; also the epilogue of the fused c_fc (linear.make_linear_gelu).
    rational_tanh: tanh_rational instead of T.tanh (the CPU build).

    A plain Python function: TVMScript calls it while parsing, so it inlines into the kernel's IR."""
    tanh = tanh_rational if rational_tanh else T.tanh
    return T.float32(0.5) * x * (T.float32(1) + tanh(T.float32(SQRT_2_OVER_PI) * (x + T.float32(0.044715) * x * x * x)))


def make_gelu(n_features: int, dtype: str = "float32", seq_len: int | None = None, rational_tanh: bool = False):
    check_dtype(dtype)
    F = T.int64(n_features)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def gelu(x_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, F), dtype)
        y = T.match_buffer(y_h, (n, F), dtype)
        for i, j in T.grid(n, F):
            with T.sblock("gelu"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.Cast(dtype, gelu_expr(T.Cast(ACC, x[vi, vj]), rational_tanh))

    return gelu


def gelu_ref(x):
    xf = x.astype(np.float32)
    y = 0.5 * xf * (1.0 + np.tanh(SQRT_2_OVER_PI * (xf + 0.044715 * xf ** 3)))
    return y.astype(x.dtype)
