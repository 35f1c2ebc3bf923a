"""Token + position embedding.

    x[i, :] = wte[ids[i], :] + wpe[m - n + i, :]        i in [0, n)

`n` is the number of new tokens (the prompt in prefill, 1 in decode) and `m` the sequence length
after them, so new token i sits at absolute position `m - n + i`.

    ids [n] int32,  wte [vocab, n_embd],  wpe [n_positions, n_embd]  ->  x [n, n_embd]
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, check_dtype


def make_embedding(n_vocab: int, n_positions: int, n_embd: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    V, P, C = T.int64(n_vocab), T.int64(n_positions), T.int64(n_embd)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def embedding(ids_h: T.handle, wte: T.Buffer((V, C), dtype), wpe: T.Buffer((P, C), dtype),
                  m: T.int64, x_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        ids = T.match_buffer(ids_h, (n,), "int32")
        x = T.match_buffer(x_h, (n, C), dtype)            # [n, n_embd]
        for i, c in T.grid(n, C):
            with T.sblock("embedding"):
                vi, vc = T.axis.remap("SS", [i, c])
                x[vi, vc] = wte[T.Cast("int64", ids[vi]), vc] + wpe[m - n + vi, vc]

    return embedding


def make_embedding_decode(n_vocab: int, n_positions: int, n_embd: int, dtype: str = "float32"):
    """Decode's embedding: one token at the position read from `pos` (= m - 1), not a shape.

    ids [1] int32, pos [1] int32, wte [vocab, n_embd], wpe [n_positions, n_embd]  ->  x [1, n_embd]
    """
    check_dtype(dtype)
    V, P, C = T.int64(n_vocab), T.int64(n_positions), T.int64(n_embd)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def embedding(ids: T.Buffer((one,), "int32"), pos: T.Buffer((one,), "int32"), wte: T.Buffer((V, C), dtype),
                  wpe: T.Buffer((P, C), dtype), x: T.Buffer((one, C), dtype)):
        T.func_attr({"tirx.noalias": True})
        for i, c in T.grid(one, C):
            with T.sblock("embedding"):
                vi, vc = T.axis.remap("SS", [i, c])
                x[vi, vc] = wte[T.Cast("int64", ids[vi]), vc] + wpe[T.Cast("int64", pos[0]) + vi, vc]

    return embedding


def embedding_ref(ids, wte, wpe, m):
    n = len(ids)
    return wte[np.asarray(ids)] + wpe[m - n:m]
