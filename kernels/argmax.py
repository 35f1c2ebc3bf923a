"""Greedy decoding on the device: the next token is the argmax of the logits, and it goes straight
into the next decode step's inputs, so a run of greedy steps needs nothing from the host.

    next        = min { v : logits[0, v] = max_u logits[0, u] }      (the lowest id on ties, as numpy)
    history[pos + 1] = next
    ids[0]      = next
    pos[0]      = pos + 1

    logits [1, vocab] float32;  ids [1], pos [1], history [n_ctx + 1] int32 (updated in place)

Two kernels. `argmax`: two reductions over the vocabulary (the max, then the first id holding it), a
chain GeneralReduction turns into one kernel (one block of threads), as it does for layernorm's
statistics; int32/float32 only, so WebGPU (no 64-bit integers in WGSL) compiles it too. `advance`: a
one-thread kernel that writes the token and the position where the next decode step reads them.
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import F32_MIN


def make_argmax(n_vocab: int):
    """next[0] = the lowest v with logits[0, v] = max_u logits[0, u]

    logits [1, vocab] float32 -> next [1] int32
    """
    V = T.int64(n_vocab)
    one = T.int64(1)
    lowest = T.float32(F32_MIN)

    @T.prim_func(s_tir=True)
    def argmax(logits: T.Buffer((one, V), "float32"), next_id: T.Buffer((one,), "int32")):
        T.func_attr({"tirx.noalias": True})
        best = T.sblock_alloc_buffer((one,), "float32")
        first = T.sblock_alloc_buffer((one,), "int32")
        for i, v in T.grid(one, V):
            with T.sblock("max"):
                vi, vv = T.axis.remap("SR", [i, v])
                with T.init():
                    best[vi] = lowest
                best[vi] = T.max(best[vi], logits[vi, vv])
        for i, v in T.grid(one, V):
            with T.sblock("first_max"):
                vi, vv = T.axis.remap("SR", [i, v])
                with T.init():                       # min's identity: cross-thread reduction needs it exact
                    first[vi] = T.max_value("int32")
                first[vi] = T.min(first[vi], T.if_then_else(logits[vi, vv] == best[vi], T.Cast("int32", vv),
                                                            T.max_value("int32")))
        for i in T.serial(one):
            with T.sblock("store"):
                vi = T.axis.spatial(one, i)
                next_id[vi] = first[vi]

    return argmax


def make_advance(n_ctx: int):
    """Feed the chosen token to the next decode step:

        history[pos + 1] = next;  ids[0] = next;  pos[0] = pos + 1

    next [1] int32;  ids [1], pos [1] (0 <= pos < n_ctx), history [n_ctx + 1] int32 (updated in place)
    """
    P1 = T.int64(n_ctx + 1)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def advance(next_id: T.Buffer((one,), "int32"), ids: T.Buffer((one,), "int32"), pos: T.Buffer((one,), "int32"),
                history: T.Buffer((P1,), "int32")):
        T.func_attr({"tirx.noalias": True})
        # two blocks, because a block may not read and write the same buffer: `feed` reads the old
        # position, `step` writes the new one
        new_pos = T.sblock_alloc_buffer((one,), "int32")
        for i in T.serial(one):
            with T.sblock("feed"):
                vi = T.axis.spatial(one, i)
                history[T.Cast("int64", pos[vi]) + one] = next_id[vi]
                ids[vi] = next_id[vi]
                new_pos[vi] = pos[vi] + 1
        for i in T.serial(one):
            with T.sblock("step"):
                vi = T.axis.spatial(one, i)
                pos[vi] = new_pos[vi]

    return advance


def argmax_ref(logits):
    return np.array([np.argmax(logits[0])], np.int32)


def advance_ref(next_id, ids, pos, history):
    """Returns updated copies of (ids, pos, history)."""
    nxt = int(next_id[0])
    ids, pos, history = ids.copy(), pos.copy(), history.copy()
    history[pos[0] + 1] = nxt
    ids[0], pos[0] = nxt, pos[0] + 1
    return ids, pos, history
