"""GELU, tanh approximation (GPT-2's "gelu_new"), elementwise.

    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))

    x [n, F] -> y [n, F]            computed in float32, stored in dtype

On the CPU the model builds it with tanh as a ratio of polynomials (_cpu_math.tanh_rational), not T.tanh:
see there why.
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._cpu_math import tanh_rational
from ._dtypes import seq_len_var, ACC, check_dtype

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


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
