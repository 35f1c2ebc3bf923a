"""Linear layer, y = x @ W.T + b (GPT-2's c_attn, c_proj, c_fc; Hugging Face calls it Conv1D).

    y[i, j] = sum_k x[i, k] * W[j, k] + b[j]

    x [n, K], W [N, K], b [N] -> y [n, N]        accumulated in float32 whatever the dtype

W is stored [out, in] = [N, K] (HF's Conv1D stores [K, N]; weights.py transposes at load time):
with the reduction over W's innermost axis, the n == 1 case (decode) is the `y = x @ W.T` pattern
DLight's GEMV rule matches, and prefill is the "NT" matmul the Matmul rule expects.

Two blocks: the pure multiply-accumulate ("matmul") and an elementwise epilogue ("bias") that adds
the bias and casts back to `dtype`. Rules schedule the first and inline or fuse the second.
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype
from .gelu import gelu_expr, gelu_ref


@T.macro
def _multiply_accumulate(acc, x, w, n, N, K):
    """acc[i, j] = sum_k x[i, k] * W[j, k] in float32: the "matmul" block every linear starts with.
    A T.macro: TVMScript pastes it into each kernel below, so each still reads as one loop nest."""
    for i, j, k in T.grid(n, N, K):
        with T.sblock("matmul"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            with T.init():
                acc[vi, vj] = T.float32(0)
            acc[vi, vj] = acc[vi, vj] + T.Cast(ACC, x[vi, vk]) * T.Cast(ACC, w[vj, vk])


def make_linear(in_features: int, out_features: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    K, N = T.int64(in_features), T.int64(out_features)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def linear(x_h: T.handle, w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, K), dtype)            # [n, K]
        y = T.match_buffer(y_h, (n, N), dtype)            # [n, N]
        acc = T.sblock_alloc_buffer((n, N), ACC)
        for i, j, k in T.grid(n, N, K):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = T.float32(0)
                acc[vi, vj] = acc[vi, vj] + T.Cast(ACC, x[vi, vk]) * T.Cast(ACC, w[vj, vk])
        for i, j in T.grid(n, N):
            with T.sblock("bias"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.Cast(dtype, acc[vi, vj] + T.Cast(ACC, b[vj]))

    return linear


# --- fused epilogues: what follows a linear in GPT-2, folded into its epilogue block -------------------
# Each saves a kernel launch and a round trip of the activation through memory. Rules see the same
# "matmul + elementwise epilogue" pair as above; only the epilogue's expression (and inputs) differ.

def make_linear_gelu(in_features: int, out_features: int, dtype: str = "float32", seq_len: int | None = None,
                     rational_tanh: bool = False):
    """c_fc followed by GELU:  y = gelu(x @ W.T + b)        x [n, K], W [N, K], b [N] -> y [n, N]
    rational_tanh: GELU's tanh as _cpu_math.tanh_rational (the CPU build: it vectorizes, T.tanh does not there)."""
    check_dtype(dtype)
    K, N = T.int64(in_features), T.int64(out_features)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def linear_gelu(x_h: T.handle, w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, K), dtype)            # [n, K]
        y = T.match_buffer(y_h, (n, N), dtype)            # [n, N]
        acc = T.sblock_alloc_buffer((n, N), ACC)
        _multiply_accumulate(acc, x, w, n, N, K)
        for i, j in T.grid(n, N):
            with T.sblock("bias_gelu"):
                vi, vj = T.axis.remap("SS", [i, j])
                # GELU of the float32 sum: the bias-added value is not rounded to dtype in between
                y[vi, vj] = T.Cast(dtype, gelu_expr(acc[vi, vj] + T.Cast(ACC, b[vj]), rational_tanh))

    return linear_gelu


def make_linear_residual(in_features: int, out_features: int, dtype: str = "float32", seq_len: int | None = None):
    """c_proj followed by the residual add:  y = r + (x @ W.T + b)

    x [n, K], W [N, K], b [N], r [n, N] (the residual stream) -> y [n, N]
    """
    check_dtype(dtype)
    K, N = T.int64(in_features), T.int64(out_features)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def linear_residual(x_h: T.handle, w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype), r_h: T.handle,
                        y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, K), dtype)            # [n, K]
        r = T.match_buffer(r_h, (n, N), dtype)            # [n, N]
        y = T.match_buffer(y_h, (n, N), dtype)            # [n, N]
        acc = T.sblock_alloc_buffer((n, N), ACC)
        _multiply_accumulate(acc, x, w, n, N, K)
        for i, j in T.grid(n, N):
            with T.sblock("bias_residual"):
                vi, vj = T.axis.remap("SS", [i, j])
                # the sublayer's output is rounded to dtype before the add, as in HF's unfused graph
                y[vi, vj] = r[vi, vj] + T.Cast(dtype, acc[vi, vj] + T.Cast(ACC, b[vj]))

    return linear_residual


def linear_gelu_ref(x, w, b):
    y = x.astype(np.float32) @ w.astype(np.float32).T + b.astype(np.float32)
    return gelu_ref(y).astype(x.dtype)


def linear_residual_ref(x, w, b, r):
    return r + linear_ref(x, w, b)


def linear_ref(x, w, b):
    y = x.astype(np.float32) @ w.astype(np.float32).T + b.astype(np.float32)
    return y.astype(x.dtype)
