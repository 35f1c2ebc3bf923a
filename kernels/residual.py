"""Residual connection, elementwise: y = a + b.

    a [n, C], b [n, C] -> y [n, C]
"""

from tinygpt2.tvm_shim import T

from ._dtypes import seq_len_var, check_dtype


def make_add(n_embd: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    C = T.int64(n_embd)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def add(a_h: T.handle, b_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        a = T.match_buffer(a_h, (n, C), dtype)
        b = T.match_buffer(b_h, (n, C), dtype)
        y = T.match_buffer(y_h, (n, C), dtype)
        for i, j in T.grid(n, C):
            with T.sblock("add"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = a[vi, vj] + b[vi, vj]

    return add


def add_ref(a, b):
    return a + b
