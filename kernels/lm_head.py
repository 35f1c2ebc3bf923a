"""Language-model head on the last position only, with the tied token embedding.

    logits[0, v] = sum_k x[n - 1, k] * wte[v, k]

    x [n, C] (after ln_f),  wte [vocab, C]  ->  logits [1, vocab] float32

Only the last position's logits are needed to sample the next token, so prefill skips the other
n - 1 rows: n times less work than a full [n, vocab] matmul. wte is already [out, in], the GEMV layout.
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, ACC, check_dtype


def make_lm_head(n_vocab: int, n_embd: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    V, C = T.int64(n_vocab), T.int64(n_embd)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def lm_head(x_h: T.handle, wte: T.Buffer((V, C), dtype), logits: T.Buffer((T.int64(1), V), ACC)):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (n, C), dtype)            # [n, C]
        for i, v, k in T.grid(T.int64(1), V, C):
            with T.sblock("lm_head"):
                vi, vv, vk = T.axis.remap("SSR", [i, v, k])
                with T.init():
                    logits[vi, vv] = T.float32(0)
                logits[vi, vv] = logits[vi, vv] + T.Cast(ACC, x[n - 1 + vi, vk]) * T.Cast(ACC, wte[vv, vk])

    return lm_head


def lm_head_ref(x, wte):
    return (x[-1:].astype(np.float32) @ wte.astype(np.float32).T).astype(np.float32)
