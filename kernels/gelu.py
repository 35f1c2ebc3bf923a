"""GELU, tanh approximation (GPT-2's "gelu_new"), elementwise.

    y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))

    x [n, F] -> y [n, F]            computed in float32, stored in dtype
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def make_gelu(n_features: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    F = T.int64(n_features)
    c0 = T.float32(SQRT_2_OVER_PI)
    c1 = T.float32(0.044715)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def gelu(x_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, F), dtype)
        y = T.match_buffer(y_h, (n, F), dtype)
        for i, j in T.grid(n, F):
            with T.sblock("gelu"):
                vi, vj = T.axis.remap("SS", [i, j])
                # x is written out three times: an `xf = ...` line would declare a buffer, not a scalar
                y[vi, vj] = T.Cast(dtype, T.float32(0.5) * T.Cast(ACC, x[vi, vj]) * (T.float32(1) + T.tanh(
                    c0 * (T.Cast(ACC, x[vi, vj]) + c1 * T.Cast(ACC, x[vi, vj]) * T.Cast(ACC, x[vi, vj])
                          * T.Cast(ACC, x[vi, vj])))))

    return gelu


def gelu_ref(x):
    xf = x.astype(np.float32)
    y = 0.5 * xf * (1.0 + np.tanh(SQRT_2_OVER_PI * (xf + 0.044715 * xf ** 3)))
    return y.astype(x.dtype)
