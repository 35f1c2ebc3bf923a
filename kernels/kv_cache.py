"""KV-cache append: copy the new tokens' keys and values out of the fused qkv activation into the
per-layer cache, in place.

    k_cache[h, m - n + i, d] = qkv[i, 1*C + h*D + d]
    v_cache[h, m - n + i, d] = qkv[i, 2*C + h*D + d]         i in [0, n), h in [0, H), d in [0, D)

    qkv [n, 3C] (q | k | v, each C = H*D wide, head-major as HF splits them),
    k_cache, v_cache [H, n_ctx, D] (updated in place; positions >= m are untouched),  m: length after

The Relax graph calls it with `call_tir_inplace`: the cache tensors are both input and output.
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, check_dtype


def make_kv_append(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def kv_append(qkv_h: T.handle, k_cache: T.Buffer((H, P, D), dtype), v_cache: T.Buffer((H, P, D), dtype),
                  m: T.int64):
        T.func_attr({"tirx.noalias": True})
        qkv = T.match_buffer(qkv_h, (n, C * 3), dtype)    # [n, 3C]
        # one block writes both: one kernel launch per layer, not two
        for i, h, d in T.grid(n, H, D):
            with T.sblock("kv_append"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                k_cache[vh, m - n + vi, vd] = qkv[vi, C + vh * D + vd]
                v_cache[vh, m - n + vi, vd] = qkv[vi, C * 2 + vh * D + vd]

    return kv_append


def make_kv_append_decode(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32"):
    """Decode's append: the one new token goes to the position read from `pos` (= m - 1), not a shape,
    so the launch is the same at every step (see attention.py's decode kernels).

    qkv [1, 3C], k_cache, v_cache [H, n_ctx, D] (in place), pos [1] int32
    """
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def kv_append(qkv: T.Buffer((one, C * 3), dtype), k_cache: T.Buffer((H, P, D), dtype),
                  v_cache: T.Buffer((H, P, D), dtype), pos: T.Buffer((one,), "int32")):
        T.func_attr({"tirx.noalias": True})
        for i, h, d in T.grid(one, H, D):
            with T.sblock("kv_append"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                k_cache[vh, T.Cast("int64", pos[0]) + vi, vd] = qkv[vi, C + vh * D + vd]
                v_cache[vh, T.Cast("int64", pos[0]) + vi, vd] = qkv[vi, C * 2 + vh * D + vd]

    return kv_append


def kv_append_ref(qkv, k_cache, v_cache, m):
    """Returns updated copies of (k_cache, v_cache)."""
    n = qkv.shape[0]
    H, _, D = k_cache.shape
    C = H * D
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    k_cache[:, m - n:m] = qkv[:, C:2 * C].reshape(n, H, D).transpose(1, 0, 2)
    v_cache[:, m - n:m] = qkv[:, 2 * C:].reshape(n, H, D).transpose(1, 0, 2)
    return k_cache, v_cache
