"""GELU, tanh approximation (GPT-2's "gelu_new"), elementwise.

    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))

    x [n, F] -> y [n, F]            computed in float32, stored in dtype
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_expr(x):
    """The formula on a float32 PrimExpr; also the epilogue of the fused c_fc (linear.make_linear_gelu).

    A plain Python function: TVMScript calls it while parsing, so it inlines into the kernel's IR."""
    return T.float32(0.5) * x * (T.float32(1) + T.tanh(T.float32(SQRT_2_OVER_PI) * (x + T.float32(0.044715) * x * x * x)))


def make_gelu(n_features: int, dtype: str = "float32", seq_len: int | None = None):
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
                y[vi, vj] = T.Cast(dtype, gelu_expr(T.Cast(ACC, x[vi, vj])))

    return gelu


def gelu_ref(x):
    xf = x.astype(np.float32)
    y = 0.5 * xf * (1.0 + np.tanh(SQRT_2_OVER_PI * (xf + 0.044715 * xf ** 3)))
    return y.astype(x.dtype)
