"""Layer normalisation over the last axis (GPT-2's ln_1, ln_2, ln_f).

    mu[i]  = 1/C * sum_k x[i, k]
    var[i] = 1/C * sum_k (x[i, k] - mu[i])^2                 (two passes: no E[x^2]-E[x]^2 cancellation)
    y[i, k] = (x[i, k] - mu[i]) / sqrt(var[i] + eps) * gamma[k] + beta[k]

    x [n, C], gamma [C], beta [C] -> y [n, C]      statistics in float32 whatever the dtype

Three blocks: two reductions feeding an elementwise one, the shape DLight's GeneralReduction rule
recognises (softmax has the same shape).
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype


@T.macro(hygienic=False)
def _statistics(x, x_sum, sq_sum, n, C, inv_c):
    """x_sum = sum_k x, then sq_sum = sum_k (x - mu)^2: two reductions over k, in float32."""
    for i, k in T.grid(n, C):
        with T.sblock("x_sum"):
            vi, vk = T.axis.remap("SR", [i, k])
            with T.init():
                x_sum[vi] = T.float32(0)
            x_sum[vi] = x_sum[vi] + T.Cast(ACC, x[vi, vk])
    for i, k in T.grid(n, C):
        with T.sblock("sq_sum"):
            vi, vk = T.axis.remap("SR", [i, k])
            with T.init():
                sq_sum[vi] = T.float32(0)
            sq_sum[vi] = sq_sum[vi] + (T.Cast(ACC, x[vi, vk]) - x_sum[vi] * inv_c) * (
                T.Cast(ACC, x[vi, vk]) - x_sum[vi] * inv_c)


def make_layernorm(n_embd: int, dtype: str = "float32", eps: float = 1e-5, affine: bool = True,
                   seq_len: int | None = None):
    """affine=False: y = (x - mu) / sqrt(var + eps), no gamma, beta (arguments x, y): the layernorms of a
    build with `fused-decode`, whose gamma and beta are folded into the linear after them
    (weights.fold_layernorms)."""
    check_dtype(dtype)
    C = T.int64(n_embd)
    inv_c = T.float32(1.0 / n_embd)
    eps_ = T.float32(eps)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def layernorm(x_h: T.handle, gamma: T.Buffer((C,), dtype), beta: T.Buffer((C,), dtype), y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, C), dtype)            # [n, C]
        y = T.match_buffer(y_h, (n, C), dtype)            # [n, C]
        x_sum = T.sblock_alloc_buffer((n,), ACC)                 # sum_k x
        sq_sum = T.sblock_alloc_buffer((n,), ACC)                # sum_k (x - mu)^2
        _statistics(x, x_sum, sq_sum, n, C, inv_c)
        for i, k in T.grid(n, C):
            with T.sblock("normalize"):
                vi, vk = T.axis.remap("SS", [i, k])
                y[vi, vk] = T.Cast(dtype, (T.Cast(ACC, x[vi, vk]) - x_sum[vi] * inv_c)
                                   * T.rsqrt(sq_sum[vi] * inv_c + eps_)
                                   * T.Cast(ACC, gamma[vk]) + T.Cast(ACC, beta[vk]))

    @T.prim_func(s_tir=True)
    def normalize(x_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, C), dtype)            # [n, C]
        y = T.match_buffer(y_h, (n, C), dtype)            # [n, C]
        x_sum = T.sblock_alloc_buffer((n,), ACC)
        sq_sum = T.sblock_alloc_buffer((n,), ACC)
        _statistics(x, x_sum, sq_sum, n, C, inv_c)
        for i, k in T.grid(n, C):
            with T.sblock("normalize"):
                vi, vk = T.axis.remap("SS", [i, k])
                y[vi, vk] = T.Cast(dtype, (T.Cast(ACC, x[vi, vk]) - x_sum[vi] * inv_c)
                                   * T.rsqrt(sq_sum[vi] * inv_c + eps_))

    return layernorm if affine else normalize


def layernorm_ref(x, gamma=None, beta=None, eps=1e-5):
    """gamma, beta None: make_layernorm(..., affine=False)'s (x - mu) / sqrt(var + eps)."""
    xf = x.astype(np.float32)
    mu = xf.mean(-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(-1, keepdims=True)
    y = (xf - mu) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma.astype(np.float32) + beta.astype(np.float32)
    return y.astype(x.dtype)
