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

On a GPU, with the rule list's `fused-decode`, the three are one hand-scheduled kernel instead,
`make_argmax_advance_gpu`: one block, every logit read once (the two reductions above read them twice),
and the advance done by its thread 0 (on an H200 the three took 4.2 + 1.1 + 1.0 us of gpt2's decode step).
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import F32_MIN
from .ln_linear import _without_param


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


@T.macro(hygienic=False)
def block_argmax(TH, t_val, t_id, out_val, out_id, i):
    """out_val[i] = max over the block's threads t of t_val[t]; out_id[i] = the lowest t_id[t] among the
    threads holding it (numpy's tie rule, when each thread's id is its own first). Two cross-thread
    reductions, which TVM lowers to warp shuffles + shared memory; `i` picks the element of out_val /
    out_id to write (a reduction inside a loop writes its own element)."""
    for tx in T.thread_binding(TH, thread="threadIdx.x"):
        with T.sblock("b_max"):
            vi = T.axis.spatial(out_val.shape[0], i)
            vt = T.axis.reduce(TH, tx)
            with T.init():
                out_val[vi] = T.float32(F32_MIN)
            out_val[vi] = T.max(out_val[vi], t_val[vt])
    for tx in T.thread_binding(TH, thread="threadIdx.x"):
        with T.sblock("b_first"):
            vi = T.axis.spatial(out_val.shape[0], i)
            vt = T.axis.reduce(TH, tx)
            with T.init():                       # min's identity: cross-thread reduction needs it exact
                out_id[vi] = T.max_value("int32")
            out_id[vi] = T.min(out_id[vi], T.if_then_else(t_val[vt] == out_val[vi], t_id[vt], T.max_value("int32")))


def make_argmax_advance_gpu(n_vocab: int, n_ctx: int, threads: int = 1024, parts: int = 0):
    """make_argmax then make_advance, as one hand-scheduled GPU kernel of one block:

        next = min { v : logits[0, v] = max_u logits[0, u] }
        history[pos + 1] = next;  ids[0] = next;  pos[0] = pos + 1;  next_id[0] = next

    logits [1, vocab] float32;  ids [1], pos [1], history [n_ctx + 1] int32 (in place) -> next_id [1] int32

    `threads` threads (1024 on CUDA, 256 on WebGPU, its limit), thread t owning logits t, t + threads, ...:
      scan      its logits in groups of at most 32 loads, all of a group issued before any is compared
                (one memory latency a group, not one a logit), keeping the first of its largest
                (ids rise with the loop: a later equal logit does not replace it);
      b_max     the block's max of the threads' bests (warp shuffles + shared memory, as TVM lowers a
                reduction over threadIdx.x);
      b_first   the lowest id among the threads whose best is that max: numpy's tie rule;
      advance   thread 0 feeds the next step. pos is loaded in `scan`, so its latency passes there.
    Logits past the vocabulary (the last group's tail) read logit vocab - 1 again, with its own id:
    a duplicate never changes the answer.

    parts > 0: the logits come already reduced by the head, `parts` candidates (kernels/lm_head.py's
    make_lm_head_decode(argmax=True): each block's best logit and the lowest id holding it), which take the
    logits' place: best [1, parts] float32, best_id [1, parts] int32, ids [1], pos [1], history -> next_id. Each
    thread then keeps the lowest id among its equal bests (the ids no longer rise with the loop).
    """
    V, P1, one = T.int64(n_vocab), T.int64(n_ctx + 1), T.int64(1)
    n_vocab = parts or n_vocab                      # (what the threads scan: the candidates, or the vocabulary)
    per_thread = -(-n_vocab // threads)
    n_groups = -(-per_thread // 32)
    TH, G, JO = T.int64(threads), T.int64(-(-per_thread // n_groups)), T.int64(n_groups)
    lowest, none = T.float32(F32_MIN), T.max_value("int32")
    NP = T.int64(max(parts, 1))
    by_parts = parts > 0                            # (a plain bool: TVMScript resolves it while parsing)
    if parts:
        V = T.int64(parts)                          # (scanned, below: candidates, not logits)

    @T.prim_func(s_tir=True)
    def argmax_advance(logits: T.Buffer((one, V), "float32"), best_id: T.Buffer((one, NP), "int32"),
                       ids: T.Buffer((one,), "int32"), pos: T.Buffer((one,), "int32"),
                       history: T.Buffer((P1,), "int32"), next_id: T.Buffer((one,), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        # per thread (indexed by the thread, so that TVM compacts each to one register)
        t_best = T.sblock_alloc_buffer((TH,), "float32", scope="local")
        t_first = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        t_pos = T.sblock_alloc_buffer((TH,), "int32", scope="local")
        best = T.sblock_alloc_buffer((one,), "float32", scope="shared")
        first = T.sblock_alloc_buffer((one,), "int32", scope="shared")
        for bx in T.thread_binding(one, thread="blockIdx.x"):
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("scan"):
                    vt = T.axis.spatial(TH, tx)
                    vals = T.sblock_alloc_buffer((G,), "float32", scope="local")
                    cand = T.sblock_alloc_buffer((G,), "int32", scope="local")             # (parts: their ids)
                    t_pos[vt] = pos[0]
                    t_best[vt] = lowest           # all -inf: no logit beats it, thread 0 keeps id 0 (numpy's)
                    t_first[vt] = T.Cast("int32", T.min(vt, V - one))
                    if by_parts:
                        t_first[vt] = best_id[0, T.min(vt, V - one)]
                    for jo in T.serial(JO):
                        for g in T.unroll(G):
                            vals[g] = logits[0, T.min((jo * G + g) * TH + vt, V - one)]
                            if by_parts:
                                cand[g] = best_id[0, T.min((jo * G + g) * TH + vt, V - one)]
                        for g in T.unroll(G):          # the id first: it compares against the old best
                            if by_parts:               # (a candidate's id: ties to the lowest)
                                t_first[vt] = T.if_then_else(vals[g] > t_best[vt] or (
                                    vals[g] == t_best[vt] and cand[g] < t_first[vt]), cand[g], t_first[vt])
                            else:
                                t_first[vt] = T.if_then_else(vals[g] > t_best[vt],
                                                             T.Cast("int32", T.min((jo * G + g) * TH + vt, V - one)),
                                                             t_first[vt])
                            t_best[vt] = T.max(t_best[vt], vals[g])
            block_argmax(TH, t_best, t_first, best, first, 0)
            for tx in T.thread_binding(TH, thread="threadIdx.x"):
                with T.sblock("advance"):
                    vt = T.axis.spatial(TH, tx)
                    if vt == T.int64(0):
                        history[T.Cast("int64", t_pos[vt]) + one] = first[0]
                        ids[0] = first[0]
                        pos[0] = t_pos[vt] + 1
                        next_id[0] = first[0]

    return argmax_advance if parts else _without_param(argmax_advance, "best_id")


def argmax_ref(logits):
    return np.array([np.argmax(logits[0])], np.int32)


def advance_ref(next_id, ids, pos, history):
    """Returns updated copies of (ids, pos, history)."""
    nxt = int(next_id[0])
    ids, pos, history = ids.copy(), pos.copy(), history.copy()
    history[pos[0] + 1] = nxt
    ids[0], pos[0] = nxt, pos[0] + 1
    return ids, pos, history
