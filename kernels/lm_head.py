"""Language-model head on the last position only, with the tied token embedding.

    logits[0, v] = sum_k x[n - 1, k] * wte[v, k]

    x [n, C] (after ln_f),  wte [vocab, C]  ->  logits [1, vocab] float32

Only the last position's logits are needed to sample the next token, so prefill skips the other
n - 1 rows: n times less work than a full [n, vocab] matmul. wte is already [out, in], the GEMV layout.
"""

import numpy as np

from tinygpt2.tvm_shim import T

from ._dtypes import F32_MIN, seq_len_var, ACC, check_dtype
from ._pdl import flags as pdl_flags, grid_wait, read_coherently
from .layernorm import layernorm_ref
from .ln_linear import (CACHE_LINE, ITEMSIZE, PIPE_BLOCKS, PIPE_THREADS, UNROLL, _dot_shared, _first_group, _lanes_sum,
                        _load_group, _swap, _without_param, _x_to_shared, cache_lines, pipe_grid)


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


# --- decode on a GPU: ln_f and the head as one persistent grid ----------------------------------------------------
# In decode the head is the step's largest read by far (gpt2-xl fp16: wte is 161 MB, 11% of the step's bytes), and
# ln_f before it a launch of its own that reads 3 KB (gpt2-xl on an H100, in the CUDA graph: 2.6 us, 0.2% of the
# step, for a kernel whose work takes nanoseconds). Unlike c_attn's and c_fc's layernorms (kernels/ln_linear.py),
# ln_f's gamma and beta cannot be folded into the weights without a second copy of wte, which the embedding reads
# as it is; so each block computes layernorm(x) * gamma + beta itself, once, into shared memory, and its groups of
# rows then read it from there. The grid is ln_linear's pipelined one (pipe_grid, make_linear_pipe_decode): a
# block's groups of TY rows in turn, the next group's W loaded while this one's is multiplied.


HEAD_BLOCKS = PIPE_BLOCKS     # the grid's blocks at most (4 an SM of an H100: 524 for gpt2-xl's 12565 groups of 4 rows)


def head_blocks(n_vocab: int, n_embd: int, dtype: str, max_lanes: int = 8) -> int:
    """make_lm_head_decode's blocks with the default grid: with argmax, its candidates for argmax_advance."""
    return pipe_grid(n_embd, n_vocab, dtype, max_lanes, HEAD_BLOCKS)[5]


def make_lm_head_decode(n_vocab: int, n_embd: int, dtype: str = "float32", eps: float = 1e-5, max_lanes: int = 8,
                        pdl: str | None = None, blocks: int | None = None, argmax: bool = False):
    """ln_f + lm_head for one token, hand-scheduled for a GPU:

        h            = Cast(dtype, (x - mu) * rsqrt(var + eps) * gamma + beta)     (make_layernorm's, float32)
        logits[0, v] = sum_k h[k] * wte[v, k]                                       (float32)

    x [1, C], gamma [C], beta [C], wte [vocab, C] -> logits [1, vocab] float32

    Grid: ln_linear.pipe_grid's (at most `blocks`, default HEAD_BLOCKS; TX lanes a row, TY rows a group). In order,
    in each block:
      1. its first group's rows of W into registers (pdl: with an L2 prefetch of them, which keeps ptxas from
         moving the loads after the wait; then the wait: x is the last layer's output);
      2. x into shared memory;
      3. mu, then var = mean((x - mu)^2), by each warp over the whole of x (warp sums, no barrier), as
         layernorm_ref's two passes;
      4. h into shared memory, each thread its own elements;
      5. its groups in turn: the next group's W loaded, this one's times h (16-byte shared loads), the lanes'
         sums added, lane 0 of each row stores its logit.
    max_lanes, pdl: as make_linear_pipe_decode's (pdl: CUDA sm_90+, one of kernels/_pdl.py's MODES; the kernel
    after it, the sampler or argmax, is launched the ordinary way, so this one never lets it launch early).
    argmax (greedy decode): two more outputs, each block's largest logit and the lowest id holding it,
    best [1, blocks] float32 and best_id [1, blocks] int32 (lm_head_partials_ref), kept by lane 0 of each row's warp as
    its logits come (a warp's ids rise from group to group: a later equal logit does not replace the first) and
    taken across the block's warps at its end; argmax.make_argmax_advance_gpu(parts=blocks) then picks among
    them, instead of reading the whole vocabulary's logits again.
    """
    check_dtype(dtype)
    vec, n_vec, tx, ty, groups, blocks, passes = pipe_grid(n_embd, n_vocab, dtype, max_lanes, blocks or HEAD_BLOCKS)
    C, V_ = T.int64(n_embd), T.int64(n_vocab)
    one = T.int64(1)
    TX, TY, NB = T.int64(tx), T.int64(ty), T.int64(blocks)
    VEC, CV, KO = T.int64(vec), T.int64(n_vec), T.int64(-(-n_vec // tx))
    ITERS = T.int64(passes)
    XI = T.int64(-(-n_vec // PIPE_THREADS))                    # vectors of x a thread copies into shared memory
    line, lines = cache_lines(n_embd, dtype)
    LE, NL, NI = T.int64(line), T.int64(lines), T.int64(-(-lines // tx))
    assert line * ITEMSIZE[dtype] == CACHE_LINE
    inv_c, eps_ = T.float32(1.0 / n_embd), T.float32(eps)
    pdl_wait, _early, _loaded = pdl_flags(pdl)

    lowest = T.float32(F32_MIN)

    def row(group, y_):                       # the row of thread row y_ in a group (past the vocabulary: the last)
        return T.min(group * TY + y_, V_ - one)

    @T.prim_func(s_tir=True)
    def lm_head_decode(x: T.Buffer((one, C), dtype), gamma: T.Buffer((C,), dtype), beta: T.Buffer((C,), dtype),
                       wte: T.Buffer((V_, C), dtype), logits: T.Buffer((one, V_), ACC), best: T.Buffer((one, NB), ACC),
                       best_id: T.Buffer((one, NB), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t_best = T.sblock_alloc_buffer((TY,), ACC, scope="local")               # (argmax: the warp's best so far,
        t_id = T.sblock_alloc_buffer((TY,), "int32", scope="local")             # in its lane 0)
        w_best = T.sblock_alloc_buffer((TY,), ACC, scope="shared")              # (... and each warp's, at the end)
        w_id = T.sblock_alloc_buffer((TY,), "int32", scope="shared")
        b_best = T.sblock_alloc_buffer((one,), ACC, scope="local")
        b_id = T.sblock_alloc_buffer((one,), "int32", scope="local")
        w_cur = T.sblock_alloc_buffer((TY, TX, KO, VEC), dtype, scope="local")    # this group's W, per thread
        w_next = T.sblock_alloc_buffer((TY, TX, KO, VEC), dtype, scope="local")   # the next group's
        x_sh = T.sblock_alloc_buffer((C,), dtype, scope="shared")                 # x, then
        h_sh = T.sblock_alloc_buffer((C,), dtype, scope="shared")                 # layernorm(x) * gamma + beta
        h_vec = T.sblock_alloc_buffer((TY, TX, VEC), dtype, scope="local")        # one vector of h at a time
        part = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        acc = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        x_part = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        sq_part = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        row_x = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        row_sq = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            # 1. the first group's W, before the wait
            _first_group(wte, w_cur, bx, TY, TX, KO, VEC, CV, V_, LE, NL, NI, pdl_wait)
            if pdl_wait:
                read_coherently(TY, TX, T.address_of(x[0, 0]))
                grid_wait(TY, TX, False)
            # 2. x into shared memory
            _x_to_shared(x, x_sh, TY, TX, XI, VEC, CV)
            # 3. mu, then the variance about it, each warp over the whole of x
            for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("x_sum"):
                        vy, vt = T.axis.remap("SS", [ty_, tx_])
                        x_part[vy, vt] = T.float32(0)
                        for ko in T.serial(KO, annotations=UNROLL):
                            if ko * TX + vt < CV:
                                for v in T.serial(VEC, annotations=UNROLL):
                                    x_part[vy, vt] = x_part[vy, vt] + T.Cast(ACC, x_sh[(ko * TX + vt) * VEC + v])
            _lanes_sum(x_part, row_x, TY, TX)
            for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("sq_sum"):
                        vy, vt = T.axis.remap("SS", [ty_, tx_])
                        sq_part[vy, vt] = T.float32(0)
                        for ko in T.serial(KO, annotations=UNROLL):
                            if ko * TX + vt < CV:
                                for v in T.serial(VEC, annotations=UNROLL):
                                    sq_part[vy, vt] = sq_part[vy, vt] + (
                                        T.Cast(ACC, x_sh[(ko * TX + vt) * VEC + v]) - row_x[vy] * inv_c) * (
                                        T.Cast(ACC, x_sh[(ko * TX + vt) * VEC + v]) - row_x[vy] * inv_c)
            _lanes_sum(sq_part, row_sq, TY, TX)
            # 4. h = layernorm(x) * gamma + beta, rounded to dtype as make_layernorm's output is. (x read again from
            # global memory, L2: from x_sh, TVM would write h over x in place, a barrier between every two elements)
            for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                    for i in T.serial(XI):
                        for v in T.serial(VEC):
                            with T.sblock("h"):
                                if (i * TY + ty_) * TX + tx_ < CV:
                                    h_sh[((i * TY + ty_) * TX + tx_) * VEC + v] = T.Cast(dtype, (
                                        T.Cast(ACC, x[0, ((i * TY + ty_) * TX + tx_) * VEC + v]) - row_x[ty_] * inv_c)
                                        * T.rsqrt(row_sq[ty_] * inv_c + eps_)
                                        * T.Cast(ACC, gamma[((i * TY + ty_) * TX + tx_) * VEC + v])
                                        + T.Cast(ACC, beta[((i * TY + ty_) * TX + tx_) * VEC + v]))
            if argmax:                       # (all at the lowest value: the warp's first row, numpy's answer)
                for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("best_init"):
                            if tx_ == T.int64(0):
                                t_best[ty_] = lowest
                                t_id[ty_] = T.Cast("int32", row(bx, ty_))
            # 5. the block's groups in turn: the next one's W loaded, this one's multiplied by h
            for it in T.serial(ITERS):
                _load_group(wte, w_next, it + one, bx, NB, T.int64(groups), TY, TX, KO, VEC, CV, V_)
                _dot_shared(w_cur, h_sh, h_vec, part, TY, TX, KO, VEC, CV)
                _lanes_sum(part, acc, TY, TX)
                for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("store"):
                            if tx_ == T.int64(0) and (bx + it * NB) * TY + ty_ < V_:
                                logits[0, (bx + it * NB) * TY + ty_] = acc[ty_]
                _swap(w_cur, w_next, TY, TX, KO, VEC)
                if argmax:
                    for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                        for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                            with T.sblock("keep_best"):
                                if tx_ == T.int64(0) and (bx + it * NB) * TY + ty_ < V_:
                                    if acc[ty_] > t_best[ty_]:
                                        t_best[ty_] = acc[ty_]
                                        t_id[ty_] = T.Cast("int32", (bx + it * NB) * TY + ty_)
            if argmax:                       # 6. the block's best: its warps' in shared memory, taken by thread 0
                for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("warp_best"):
                            if tx_ == T.int64(0):
                                w_best[ty_] = t_best[ty_]
                                w_id[ty_] = t_id[ty_]
                for ty_ in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx_ in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("block_best"):
                            if ty_ == T.int64(0) and tx_ == T.int64(0):
                                b_best[0] = w_best[0]
                                b_id[0] = w_id[0]
                                for k in T.serial(one, TY):     # (the warps' rows interleave: ties by the id)
                                    # (selects, not an `if`: TVM's barrier pass takes no shared load in a condition)
                                    b_id[0] = T.if_then_else(w_best[k] > b_best[0] or (w_best[k] == b_best[0]
                                                                                       and w_id[k] < b_id[0]),
                                                             w_id[k], b_id[0])
                                    b_best[0] = T.max(b_best[0], w_best[k])
                                best[0, bx] = b_best[0]
                                best_id[0, bx] = b_id[0]

    if argmax:
        return lm_head_decode
    return _without_param(_without_param(lm_head_decode, "best"), "best_id")


def lm_head_decode_ref(x, gamma, beta, wte, eps=1e-5):
    """The two kernels it stands for, in sequence: layernorm (rounded to x's dtype), then the head."""
    return lm_head_ref(layernorm_ref(x, gamma, beta, eps), wte)


def lm_head_partials_ref(logits, blocks: int, rows: int):
    """make_lm_head_decode(argmax=True)'s (best, best_id): block b's rows are the groups b, b + blocks, ... of
    `rows` rows each (pipe_grid's); its best the largest of their logits, best_id the lowest id holding it."""
    V = logits.shape[-1]
    ids = np.arange(V)
    owner = (ids // rows) % blocks
    best = np.array([[logits[0, owner == b].max() for b in range(blocks)]], np.float32)
    best_id = np.array([[ids[owner == b][np.argmax(logits[0, owner == b])] for b in range(blocks)]], np.int32)
    return best, best_id
