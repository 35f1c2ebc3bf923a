"""Causal self-attention over the KV cache, as three kernels (prefill: n new tokens; decode: n = 1).

Query i (absolute position m - n + i) attends to cached positions j <= m - n + i:

    scores[h, i, j] = sum_d q[i, h, d] * k_cache[h, j, d]                      attn_scores   (a batched matmul)
    probs[h, i, j]  = softmax_j( scores[h, i, j] / sqrt(D) ), 0 where j > m - n + i   causal_softmax
    out[i, h*D + d] = sum_j probs[h, i, j] * v_cache[h, j, d]                  attn_values   (a batched matmul)

    qkv [n, 3C] (q is columns [0, C)),  k_cache, v_cache [H, n_ctx, D]  ->  out [n, C]
    scores: [H, n, m] float32 whatever the dtype; prefill's probs: [H, n, m] in the model's dtype, as
    Hugging Face rounds them (`attn_weights.type(value.dtype)`) before p.v; decode's stay float32.

In fp16, probabilities rounded to fp16 halve the bytes of the [H, n, m] tensor that goes through
memory twice, and make p.v an fp16 x fp16 matmul, which tensor cores take (`tensor-core-matmul`).

Splitting attention this way (rather than one fused "flash" kernel) keeps each piece a shape DLight
has a rule for: the two matmuls are Matmul/GEMV material, the softmax is GeneralReduction's. The
cost is that scores/probs make a round trip through memory, O(H * n * m) floats.
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._cpu_math import exp_poly
from ._dtypes import seq_len_var, ACC, F32_MIN, check_dtype
from ._pdl import flags as pdl_flags, grid_wait, read_coherently
from .kv_cache import kv_append_ref
from .ln_linear import cache_lines, vector_width


def make_attn_scores(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def attn_scores(qkv_h: T.handle, k_cache: T.Buffer((H, P, D), dtype), s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()                                     # sequence length after the new tokens
        qkv = T.match_buffer(qkv_h, (n, C * 3), dtype)    # [n, 3C]
        scores = T.match_buffer(s_h, (H, n, m), ACC)       # [H, n, m]
        for h, i, j, d in T.grid(H, n, m, D):
            with T.sblock("qk"):
                vh, vi, vj, vd = T.axis.remap("SSSR", [h, i, j, d])
                with T.init():
                    scores[vh, vi, vj] = T.float32(0)
                scores[vh, vi, vj] = scores[vh, vi, vj] + T.Cast(ACC, qkv[vi, vh * D + vd]) * T.Cast(
                    ACC, k_cache[vh, vj, vd])

    return attn_scores


def make_causal_softmax(n_head: int, head_dim: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    H = T.int64(n_head)
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def causal_softmax(s_h: T.handle, p_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()                                     # sequence length after the new tokens
        scores = T.match_buffer(s_h, (H, n, m), ACC)       # [H, n, m]
        probs = T.match_buffer(p_h, (H, n, m), dtype)      # [H, n, m]
        row_max = T.sblock_alloc_buffer((H, n), ACC)
        row_sum = T.sblock_alloc_buffer((H, n), ACC)
        # the mask `vj <= m - n + vi` is written into each block: no [n, m] mask tensor is stored
        for h, i, j in T.grid(H, n, m):
            with T.sblock("row_max"):
                vh, vi, vj = T.axis.remap("SSR", [h, i, j])
                with T.init():
                    row_max[vh, vi] = lowest
                row_max[vh, vi] = T.max(row_max[vh, vi],
                                        T.if_then_else(vj <= m - n + vi, scores[vh, vi, vj] * scale, lowest))
        for h, i, j in T.grid(H, n, m):
            with T.sblock("row_sum"):
                vh, vi, vj = T.axis.remap("SSR", [h, i, j])
                with T.init():
                    row_sum[vh, vi] = T.float32(0)
                row_sum[vh, vi] = row_sum[vh, vi] + T.if_then_else(
                    vj <= m - n + vi, T.exp(scores[vh, vi, vj] * scale - row_max[vh, vi]), T.float32(0))
        for h, i, j in T.grid(H, n, m):
            with T.sblock("normalize"):
                vh, vi, vj = T.axis.remap("SSS", [h, i, j])
                probs[vh, vi, vj] = T.Cast(dtype, T.if_then_else(
                    vj <= m - n + vi, T.exp(scores[vh, vi, vj] * scale - row_max[vh, vi]) / row_sum[vh, vi],
                    T.float32(0)))

    return causal_softmax


# --- prefill on a GPU: the causal softmax, hand-scheduled ---------------------------------------------
#
# DLight's GeneralReduction schedules causal_softmax above as three passes over the row in global
# memory (max, sum of exp, normalise), exp computed twice: on an H200 about 1.1 TB/s, the largest
# single kernel of a 1024-token gpt2-xl prefill (19%). This one reads each score once, and only the
# scores the mask keeps (j <= m - n + i: half of a square), into shared memory; the passes after it
# work there. The model uses it when the rule list has `hand-softmax` (rules.HandSoftmax).

def make_causal_softmax_gpu(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32",
                            seq_len: int | None = None):
    """causal_softmax (same math, same signature) written already scheduled for a GPU:

        probs[h, i, j] = exp(s - max_j s) / sum_j exp(s - max_j s),  s = scores[h, i, j] / sqrt(D),
                         for j <= m - n + i; 0 past it              scores [H, n, m] f32 -> probs [H, n, m] dtype

    One thread block per row (h, i), NT = 256 threads, key j = jo * NT + tx (coalesced 4-byte loads:
    rows start at any element, since m is any length, so wider vector loads would be misaligned).
    Every stage runs over all n_ctx keys, masked past m by its values rather than by a `T.where`: a
    predicate on the symbolic m would make the shared buffers' compacted size symbolic too.
      load       s[j] = scores * scale into shared memory, `lowest` where masked (not read from global);
      row_max    a reduction over the block's threads (TVM lowers it to warp shuffles + shared memory);
      exp        e[j] = exp(s[j] - max), 0 where masked;
      row_sum    the same kind of reduction;
      normalize  probs = e / sum, rounded to dtype, every j < m written (zeros past the mask).
    Shared memory: 2 * n_ctx floats (8 KiB for n_ctx = 1024).
    """
    check_dtype(dtype)
    nt = 256
    H, P = T.int64(n_head), T.int64(n_ctx)
    NT = T.int64(nt)
    JO = T.int64(-(-n_ctx // nt))                        # keys per thread (4 for n_ctx = 1024)
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)
    unroll = {"pragma_auto_unroll_max_step": 64, "pragma_unroll_explicit": 1}

    n = seq_len_var(seq_len)

    @T.prim_func(s_tir=True)
    def causal_softmax(s_h: T.handle, p_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()                                     # sequence length after the new tokens
        scores = T.match_buffer(s_h, (H, n, m), ACC)       # [H, n, m]
        probs = T.match_buffer(p_h, (H, n, m), dtype)      # [H, n, m]
        s = T.sblock_alloc_buffer((H, n, P), ACC, scope="shared")      # one row per block: [P] of it
        e = T.sblock_alloc_buffer((H, n, P), ACC, scope="shared")
        row_max = T.sblock_alloc_buffer((H, n), ACC, scope="shared")
        row_sum = T.sblock_alloc_buffer((H, n), ACC, scope="shared")
        for row in T.thread_binding(H * n, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for jo in T.serial(JO, annotations=unroll):          # JO loads per thread, all in flight
                    with T.sblock("load"):
                        vh = T.axis.spatial(H, row // n)
                        vi = T.axis.spatial(n, row % n)
                        vj = T.axis.spatial(P, jo * NT + tx)
                        s[vh, vi, vj] = T.if_then_else(vj <= m - n + vi, scores[vh, vi, vj] * scale, lowest)
            # the reductions are written as DLight's own: threads outside, each thread's keys inside
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for jo in T.serial(JO, annotations=unroll):
                    with T.sblock("row_max"):
                        vh = T.axis.spatial(H, row // n)
                        vi = T.axis.spatial(n, row % n)
                        vj = T.axis.reduce(P, jo * NT + tx)
                        with T.init():
                            row_max[vh, vi] = lowest
                        row_max[vh, vi] = T.max(row_max[vh, vi], s[vh, vi, vj])
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for jo in T.serial(JO, annotations=unroll):
                    with T.sblock("exp"):
                        vh = T.axis.spatial(H, row // n)
                        vi = T.axis.spatial(n, row % n)
                        vj = T.axis.spatial(P, jo * NT + tx)
                        e[vh, vi, vj] = T.if_then_else(vj <= m - n + vi, T.exp(s[vh, vi, vj] - row_max[vh, vi]),
                                                       T.float32(0))
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for jo in T.serial(JO, annotations=unroll):
                    with T.sblock("row_sum"):
                        vh = T.axis.spatial(H, row // n)
                        vi = T.axis.spatial(n, row % n)
                        vj = T.axis.reduce(P, jo * NT + tx)
                        with T.init():
                            row_sum[vh, vi] = T.float32(0)
                        row_sum[vh, vi] = row_sum[vh, vi] + e[vh, vi, vj]
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for jo in T.serial(JO, annotations=unroll):
                    with T.sblock("normalize"):
                        vh = T.axis.spatial(H, row // n)
                        vi = T.axis.spatial(n, row % n)
                        vj = T.axis.spatial(P, jo * NT + tx)
                        if vj < m:
                            probs[vh, vi, vj] = T.Cast(dtype, e[vh, vi, vj] / row_sum[vh, vi])

    return causal_softmax


# --- prefill on the CPU: the causal softmax, hand-scheduled ---------------------------------------------
#
# DLight's CPU Reduction (rules `reduction`, `row-reduction`) schedules causal_softmax above as one
# parallel task per row with its keys in 16-wide steps and a bounds test (j < m, m symbolic) in each
# step; TVM's vectorizer turns a loop with such a test back into scalar code, and LLVM turns T.exp
# into a libm expf call per score, twice a score: gpt2's [12, 512, 512] took 8.6 ms a layer on the
# 2-core Xeon (a thread a core). This one splits each row's kept keys into whole vectors and a scalar
# rest, and computes exp as arithmetic (_cpu_math.exp_poly): 2.1 ms. The model uses it when the CPU
# rule list has `hand-softmax` (rules.HandSoftmax; in `tuned`, where flash-prefill takes its place).


def make_causal_softmax_cpu(n_head: int, head_dim: int, dtype: str = "float32", seq_len: int | None = None,
                            lanes: int = 16):
    """causal_softmax (same math, same signature) written already scheduled for the CPU:

        probs[h, i, j] = exp(s - max_j s) / sum_j exp(s - max_j s),  s = scores[h, i, j] / sqrt(D),
                         for j < kept = m - n + i + 1; 0 past it     scores [H, n, m] f32 -> probs [H, n, m] dtype

    One parallel task per row (h, i); its kept keys as kept // lanes whole vectors of `lanes` floats
    (vectorized, no bounds test) and the kept % lanes left over (scalar). Keys past `kept` are never read.
      row_max    `lanes` running maxima, then the max across them and the rest;
      row_sum    `lanes` running sums of exp((s - max) / sqrt(D)), then across them and the rest;
      normalize  probs = exp((s - max) / sqrt(D)) / sum, rounded to dtype; zeros from kept to m.
    (s - max) / sqrt(D) is the reference's s / sqrt(D) - max_j(s / sqrt(D)), since 1 / sqrt(D) > 0.
    exp is computed twice a kept score (row_sum, normalize), as in causal_softmax, rather than stored in a
    scratch row: exp_poly is arithmetic that vectorizes (a variant that stores it has not been measured).
    """
    check_dtype(dtype)
    H, L = T.int64(n_head), T.int64(lanes)
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)

    n = seq_len_var(seq_len)

    @T.prim_func(s_tir=True)
    def causal_softmax(s_h: T.handle, p_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()                                     # sequence length after the new tokens
        scores = T.match_buffer(s_h, (H, n, m), ACC)       # [H, n, m]
        probs = T.match_buffer(p_h, (H, n, m), dtype)      # [H, n, m]
        for row in T.parallel(H * n):
            with T.sblock("row"):
                vr = T.axis.spatial(H * n, row)
                T.reads(scores[vr // n, vr % n, 0:m])
                T.writes(probs[vr // n, vr % n, 0:m])
                lane = T.sblock_alloc_buffer((L,), ACC)        # [lanes] running max, then running sum
                stat = T.sblock_alloc_buffer((2,), ACC)        # the row's max of s, its sum of exp
                h = vr // n
                i = vr % n
                kept = m - n + i + T.int64(1)                  # keys j < kept are attended to
                whole = kept // L * L                          # the keys in whole vectors
                # row_max
                for j in T.vectorized(L):
                    lane[j] = lowest
                for jo in range(kept // L):
                    for j in T.vectorized(L):
                        lane[j] = T.max(lane[j], scores[h, i, jo * L + j])
                stat[0] = lowest
                for j in range(L):
                    stat[0] = T.max(stat[0], lane[j])
                for j in range(kept - whole):
                    stat[0] = T.max(stat[0], scores[h, i, whole + j])
                # row_sum
                for j in T.vectorized(L):
                    lane[j] = T.float32(0)
                for jo in range(kept // L):
                    for j in T.vectorized(L):
                        lane[j] = lane[j] + exp_poly((scores[h, i, jo * L + j] - stat[0]) * scale)
                stat[1] = T.float32(0)
                for j in range(L):
                    stat[1] = stat[1] + lane[j]
                for j in range(kept - whole):
                    stat[1] = stat[1] + exp_poly((scores[h, i, whole + j] - stat[0]) * scale)
                # normalize
                for jo in range(kept // L):
                    for j in T.vectorized(L):
                        probs[h, i, jo * L + j] = T.Cast(
                            dtype, exp_poly((scores[h, i, jo * L + j] - stat[0]) * scale) / stat[1])
                for j in range(kept - whole):
                    probs[h, i, whole + j] = T.Cast(dtype, exp_poly((scores[h, i, whole + j] - stat[0]) * scale) / stat[1])
                for j in range(m - kept):
                    probs[h, i, kept + j] = T.Cast(dtype, T.float32(0))

    return causal_softmax


def make_attn_values(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32", seq_len: int | None = None):
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)

    n = seq_len_var(seq_len)                              # new tokens: symbolic, or fixed (1 in decode)

    @T.prim_func(s_tir=True)
    def attn_values(p_h: T.handle, v_cache: T.Buffer((H, P, D), dtype), o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()                                     # sequence length after the new tokens
        probs = T.match_buffer(p_h, (H, n, m), dtype)      # [H, n, m], rounded to dtype by the softmax
        out = T.match_buffer(o_h, (n, C), dtype)           # [n, C], heads side by side
        acc = T.sblock_alloc_buffer((H, n, D), ACC)
        for h, i, d, j in T.grid(H, n, D, m):
            with T.sblock("pv"):
                vh, vi, vd, vj = T.axis.remap("SSSR", [h, i, d, j])
                with T.init():
                    acc[vh, vi, vd] = T.float32(0)
                acc[vh, vi, vd] = acc[vh, vi, vd] + T.Cast(ACC, probs[vh, vi, vj]) * T.Cast(ACC, v_cache[vh, vj, vd])
        for i, h, d in T.grid(n, H, D):
            with T.sblock("merge_heads"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                out[vi, vh * D + vd] = T.Cast(dtype, acc[vh, vi, vd])

    return attn_values


def attn_scores_ref(qkv, k_cache, m):
    H, _, D = k_cache.shape
    n = qkv.shape[0]
    q = qkv[:, :H * D].astype(np.float32).reshape(n, H, D).transpose(1, 0, 2)      # [H, n, D]
    return q @ k_cache[:, :m].astype(np.float32).transpose(0, 2, 1)                # [H, n, m]


def causal_softmax_ref(scores, head_dim, dtype=np.float32):
    H, n, m = scores.shape
    mask = np.arange(m)[None, :] <= (m - n + np.arange(n))[:, None]                  # [n, m]
    s = np.where(mask, scores / math.sqrt(head_dim), -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)).astype(dtype)


def attn_values_ref(probs, v_cache, dtype):
    H, n, m = probs.shape
    out = probs.astype(np.float32) @ v_cache[:, :m].astype(np.float32)              # [H, n, D]
    return out.transpose(1, 0, 2).reshape(n, -1).astype(dtype)


def attention_ref(qkv, k_cache, v_cache, m):
    """The three kernels composed: causal attention of the n new queries over the cache."""
    probs = causal_softmax_ref(attn_scores_ref(qkv, k_cache, m), k_cache.shape[2])
    return attn_values_ref(probs.astype(qkv.dtype), v_cache, qkv.dtype)


# --- decode: one new token, the whole cache, the position read from memory ---------------------------
#
# Decode's kernels have no symbolic shape at all: the key axis spans the whole cache (n_ctx) and the
# position of the new token, pos = m - 1, is read from a 1-element int32 buffer instead of being a
# shape. Every launch of a decode step then has the same grid whatever the position, which is what lets
# the CUDA build capture the whole step in one CUDA graph (and WebGPU reuse the same dispatches).
# Positions j > pos are masked: `T.if_then_else` keeps the loads of K and V there from being issued
# (the cache holds stale values, possibly NaN, past the sequence), so reading the cache costs O(m), not
# O(n_ctx), in memory traffic.

def make_attn_scores_decode(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32"):
    """scores[h, 0, j] = sum_d q[0, h, d] * k_cache[h, j, d] for j <= pos, 0 beyond.

    qkv [1, 3C], k_cache [H, n_ctx, D], pos [1] int32  ->  scores [H, 1, n_ctx] float32
    """
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def attn_scores(qkv: T.Buffer((one, C * 3), dtype), k_cache: T.Buffer((H, P, D), dtype),
                    pos: T.Buffer((one,), "int32"), scores: T.Buffer((H, one, P), ACC)):
        T.func_attr({"tirx.noalias": True})
        for h, i, j, d in T.grid(H, one, P, D):
            with T.sblock("qk"):
                vh, vi, vj, vd = T.axis.remap("SSSR", [h, i, j, d])
                with T.init():
                    scores[vh, vi, vj] = T.float32(0)
                scores[vh, vi, vj] = scores[vh, vi, vj] + T.if_then_else(
                    vj <= T.Cast("int64", pos[0]),
                    T.Cast(ACC, qkv[vi, vh * D + vd]) * T.Cast(ACC, k_cache[vh, vj, vd]), T.float32(0))

    return attn_scores


def make_softmax_decode(n_head: int, head_dim: int, n_ctx: int):
    """probs[h, 0, j] = softmax_j(scores[h, 0, j] / sqrt(D)) over j <= pos, 0 beyond.

    scores [H, 1, n_ctx] float32, pos [1] int32  ->  probs [H, 1, n_ctx] float32
    """
    H, P = T.int64(n_head), T.int64(n_ctx)
    one = T.int64(1)
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)

    @T.prim_func(s_tir=True)
    def causal_softmax(scores: T.Buffer((H, one, P), ACC), pos: T.Buffer((one,), "int32"),
                       probs: T.Buffer((H, one, P), ACC)):
        T.func_attr({"tirx.noalias": True})
        row_max = T.sblock_alloc_buffer((H, one), ACC)
        row_sum = T.sblock_alloc_buffer((H, one), ACC)
        for h, i, j in T.grid(H, one, P):
            with T.sblock("row_max"):
                vh, vi, vj = T.axis.remap("SSR", [h, i, j])
                with T.init():
                    row_max[vh, vi] = lowest
                row_max[vh, vi] = T.max(row_max[vh, vi], T.if_then_else(
                    vj <= T.Cast("int64", pos[0]), scores[vh, vi, vj] * scale, lowest))
        for h, i, j in T.grid(H, one, P):
            with T.sblock("row_sum"):
                vh, vi, vj = T.axis.remap("SSR", [h, i, j])
                with T.init():
                    row_sum[vh, vi] = T.float32(0)
                row_sum[vh, vi] = row_sum[vh, vi] + T.if_then_else(
                    vj <= T.Cast("int64", pos[0]), T.exp(scores[vh, vi, vj] * scale - row_max[vh, vi]), T.float32(0))
        for h, i, j in T.grid(H, one, P):
            with T.sblock("normalize"):
                vh, vi, vj = T.axis.remap("SSS", [h, i, j])
                probs[vh, vi, vj] = T.if_then_else(
                    vj <= T.Cast("int64", pos[0]),
                    T.exp(scores[vh, vi, vj] * scale - row_max[vh, vi]) / row_sum[vh, vi], T.float32(0))

    return causal_softmax


def make_attn_values_decode(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32"):
    """out[0, h*D + d] = sum_{j <= pos} probs[h, 0, j] * v_cache[h, j, d].

    probs [H, 1, n_ctx] float32, v_cache [H, n_ctx, D], pos [1] int32  ->  out [1, C]
    """
    check_dtype(dtype)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def attn_values(probs: T.Buffer((H, one, P), ACC), v_cache: T.Buffer((H, P, D), dtype),
                    pos: T.Buffer((one,), "int32"), out: T.Buffer((one, C), dtype)):
        T.func_attr({"tirx.noalias": True})
        acc = T.sblock_alloc_buffer((H, one, D), ACC)
        for h, i, d, j in T.grid(H, one, D, P):
            with T.sblock("pv"):
                vh, vi, vd, vj = T.axis.remap("SSSR", [h, i, d, j])
                with T.init():
                    acc[vh, vi, vd] = T.float32(0)
                # masked even though probs is 0 there: 0 * a stale NaN in the cache would be NaN
                acc[vh, vi, vd] = acc[vh, vi, vd] + T.if_then_else(
                    vj <= T.Cast("int64", pos[0]), probs[vh, vi, vj] * T.Cast(ACC, v_cache[vh, vj, vd]),
                    T.float32(0))
        for i, h, d in T.grid(one, H, D):
            with T.sblock("merge_heads"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                out[vi, vh * D + vd] = T.Cast(dtype, acc[vh, vi, vd])

    return attn_values


def pad_keys(a, n_ctx):
    """[H, n, m] -> [H, n, n_ctx] with zeros past m: what decode's kernels hold beyond the position."""
    return np.concatenate([a, np.zeros(a.shape[:-1] + (n_ctx - a.shape[-1],), a.dtype)], axis=-1)


# --- decode on a GPU: the four decode kernels above as one call, split over the keys ----------------
#
# On a GPU a decode step is bound by latency, not bytes: kv_append, scores, softmax and values each
# cost a few microseconds whatever their size. This kernel does all four in one call. It is written
# already scheduled -- thread bindings, shared memory -- as TVM's own KV-cache attention kernels are
# (relax/frontend/nn/llm/kv_cache.py), because no DLight rule matches a chain of differently shaped
# reductions; the rule list leaves it alone (`tirx.is_scheduled`). The model uses it when the rule
# list has `fused-decode` (rules.FusedDecode); a CPU, which has no thread blocks, and any other list
# keep the four kernels above.
#
# Its first version gave each head one thread block that walked every key: a chain of dependent
# phases (K loads, two block reductions, V loads) in 12 blocks for gpt2's 12 heads, 10.7 us a launch
# inside the CUDA graph on an H200, slower than the four kernels it replaced (9.7 us together). This
# one splits the keys of each head into chunks of KC ("flash-decoding"): one block per (head, chunk)
# attends over its chunk alone, and a second, small kernel merges the chunks' partial results:
# 4.1 us + 1.8 us in the same graph (docs/results/trace_decode_h200.md).

def make_decode_attention(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32", pdl: str | None = None,
                          max_lanes: int = 4):
    """One decode step of attention for a GPU, the new token's K and V appended to the cache:

        k_cache[h, pos, :] = k,  v_cache[h, pos, :] = v                    (k, v: the new token's, from qkv)
        out[0, h*D + d] = sum_{j <= pos} softmax_j(q[h] . k_cache[h, j] * scale) * v_cache[h, j, d]

    qkv [1, 3C], k_cache, v_cache [H, n_ctx, D] (in place), pos [1] int32
      ->  out [1, C];  o_part [H, S, D], ml_part [H, S, 2] float32 (the chunks' partial results)

    Two kernels (two top-level loop nests of one PrimFunc):

    1. chunks: one block per (head h, chunk c of KC keys j = c*KC + t), KC = NX * NY threads, with
       NX = D / VEC lanes across a row of K or V (VEC-element vector loads) and NY groups:
         v_load  the V rows pv will need, into registers, first (their latency hides behind qk ...);
         k_load  the row of K that qk needs, into registers, likewise;
         qk      s[t] = q . k_j * scale, one key per thread, the dot product in a register;
         c_max, c_sum   block-wide reductions (TVM lowers them to warp shuffles + shared memory);
         pv      lane tx owns elements [tx*VEC, tx*VEC + VEC), group ty the keys ty, ty + NY, ...:
                 VEC partial sums in registers;
         part    o_part[h, c, d] = sum_t exp(s[t] - m_c) v_j[d],  ml_part[h, c] = (m_c, l_c):
                 the chunk's max score and sum of exp(s - m_c). Chunks past pos hold nothing used.
    2. merge: one block per head, one thread per element d, over the chunks c <= pos / KC:
         M = max_c m_c,  out[d] = sum_c o_part[h, c, d] e^(m_c - M) / sum_c l_c e^(m_c - M);
       then the new token's K and V go into the cache (nothing reads them there in this call).
    Tried and measured slower (H200, gpt2 fp16, in the CUDA graph): one block per head, the 16 chunks as
    16 groups of its 1024 threads, merged in the block after a barrier (one kernel, not two): 9.5 us a
    call against 4.0 + 1.8. All of a head's loads then go through one SM. And on CUDA, no kernel 2: each
    chunk's block fenced its partials (__threadfence), drew a ticket from a per-head counter (atomicAdd,
    zeroed once a step by a one-block kernel), and the block drawing the last ticket merged, reading the
    partials through L2 (__ldcg): logits right, but 5.97 us a call against 4.0 + 1.8 for gpt2 (the step
    251.8 -> 258.4 us) and 6.37 against 4.6 + 1.86 for gpt2-xl (1663.7 -> 1660.1 us): the fence, the
    atomic and the partials' round trip cost the last block what the merge kernel cost
    (docs/results/trace_decode_h200_last_block_merge.md).
    Keys j == pos are read from qkv, never from the cache, which holds stale values (possibly NaN)
    from there on. Every phase issues all of its loads, unconditionally, before it uses any: on an
    H200 a load under a branch of its own, used at once, cost a memory latency per key.

    pdl (CUDA sm_90+, one of kernels/_pdl.py's MODES): both kernels launched with programmatic dependent
    launch. The chunks kernel loads its V and K rows before it waits for the previous kernel: rows before
    pos, which earlier steps wrote (pos itself is set before the step's first kernel); everything else
    after: the chunks kernel's qkv with coherent loads (_pdl.read_coherently, no cost measured); the merge
    keeps read-only loads of the partials (coherent ones: 1.82 -> 2.14 us a call on an H200), and a test
    checks in SASS that they come after the wait. Both let the next kernel launch at once, in every mode
    (see next_at_once below).
    Where ptxas puts the K and V loads (SASS, nvcc 13.0) is what the kernel's time hangs on. Written first,
    as read-only loads (ld.global.nc), they were not kept there: K's came after the wait, interleaved with
    qk, and V's after the two block reductions -- two memory latencies one after the other, after the
    wait. So, before the wait, each thread also prefetches its K row and its V row into L2 (kv_prefetch:
    the rows' 128-byte lines, one asm statement each). Taking the caches' addresses into asm, it makes
    the compiler treat them as memory that may change, as _pdl.read_coherently does for qkv; their loads
    become coherent ones (ld.global), and ptxas issues all of them, K and V, before the wait (96
    registers a thread in float16, from 54: 10 blocks of 64 threads an SM, where 3 are needed). Measured
    on an H200 in the CUDA graph, fp16: the chunks kernel 4.16 -> 3.58 us a call on gpt2-xl (step
    1480.4 -> 1454.1 us), 3.71 -> 2.98 on gpt2 (231.0 -> 221.4 us);
    docs/results/trace_decode_h200_kv_prefetch.md. (K before the wait alone, as read-only loads: no
    change, gpt2-xl's step 1625.1 -> 1627.8 us, 2026-12-03.)

    max_lanes caps VEC, the elements of a vector load: 4 for WebGPU (WGSL's vec4), 8 elsewhere, so that on
    CUDA fp16 rows of K and V are read 16 bytes a load, half the loads of 8-byte ones (the same run:
    the chunks kernel 4.64 -> 4.31 us a call, gpt2-xl's step 1625.1 -> 1606.5 us, gpt2's 244.8 -> 242.5;
    docs/results/trace_decode_h200_attention_loads.md).
    """
    check_dtype(dtype)
    vec, nx, ny, kc, n_chunks = _decode_attention_layout(head_dim, n_ctx, dtype, max_lanes)
    H, D, P = T.int64(n_head), T.int64(head_dim), T.int64(n_ctx)
    C = T.int64(n_head * head_dim)
    one = T.int64(1)
    VEC, NX, NY, KC, S = T.int64(vec), T.int64(nx), T.int64(ny), T.int64(kc), T.int64(n_chunks)
    DV = T.int64(head_dim // vec)                         # vectors per row
    JY = T.int64(kc // ny)                                # keys per group in pv (16)
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)
    unroll = {"pragma_auto_unroll_max_step": 64, "pragma_unroll_explicit": 1}

    pdl_wait = pdl_flags(pdl)[0]
    LINE, LINES = (T.int64(n) for n in cache_lines(head_dim, dtype))   # a row of K or V: 1 line in float16
    # latency-bound: its loads leave HBM mostly idle, so in every mode both kernels let the next launch at
    # once: the merge, and attn_proj while the chunks run, whose weights then stream in during the attention
    # (model.py; H200, gpt2-xl's step in the CUDA graph 1446.9 -> 1426.7 us against the mode's own launch
    # points, docs/results/trace_decode_h200_attn_proj_overlap.md)
    next_at_once = pdl_wait

    @T.prim_func(s_tir=True)
    def decode_attention(qkv: T.Buffer((one, C * 3), dtype), k_cache: T.Buffer((H, P, D), dtype),
                         v_cache: T.Buffer((H, P, D), dtype), pos: T.Buffer((one,), "int32"),
                         out: T.Buffer((one, C), dtype), o_part: T.Buffer((H, S, D), ACC),
                         ml_part: T.Buffer((H, S, T.int64(2)), ACC)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        s = T.sblock_alloc_buffer((H, S, KC), ACC, scope="shared")      # scores of the chunk, scaled
        p = T.sblock_alloc_buffer((H, S, KC), ACC, scope="shared")      # exp(s - m_c), 0 past pos
        c_max = T.sblock_alloc_buffer((H, S), ACC, scope="shared")
        c_sum = T.sblock_alloc_buffer((H, S), ACC, scope="shared")
        partial = T.sblock_alloc_buffer((H, S, NY, D), ACC, scope="shared")   # pv's per-group sums
        # registers: indexed by (head, chunk, group, lane, ...) so that TVM compacts it to one thread's JY * VEC
        v_reg = T.sblock_alloc_buffer((H, S, NY, NX, JY * VEC), dtype, scope="local")
        k_reg = T.sblock_alloc_buffer((H, S, KC, D), dtype, scope="local")            # one row of K a thread
        # --- kernel 1: one block per (head, chunk) ---
        for b in T.thread_binding(H * S, thread="blockIdx.x"):
            # the V vectors pv needs, loaded before anything else: their memory latency then passes while
            # qk, the two reductions and exp run, instead of after them. Unconditional (keys past pos read
            # row max(pos - 1, 0): in bounds, cheap) and selected away in pv.
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("v_load"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vy, vx = T.axis.spatial(NY, ty), T.axis.spatial(NX, tx)
                        for jy in T.unroll(JY):
                            for e in T.vectorized(VEC):
                                v_reg[vh, vc, vy, vx, jy * VEC + e] = v_cache[vh, T.min(vc * KC + jy * NY + vy, T.Cast(
                                    "int64", T.max(pos[0] - 1, 0))), vx * VEC + e]
            # ... and the row of K that qk needs: rows before pos too, which earlier steps wrote, so that
            # with PDL both may come in while the kernel waits for qkv (ptxas places them after the wait
            # all the same; measured: no change alone; see the docstring). Keys past pos read row
            # max(pos - 1, 0) (in bounds, cheap: one row) and are selected away in qk.
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("k_load"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vt = T.axis.spatial(KC, ty * NX + tx)
                        for dv in T.unroll(DV):
                            for e in T.vectorized(VEC):
                                k_reg[vh, vc, vt, dv * VEC + e] = k_cache[vh, T.min(vc * KC + vt, T.Cast(
                                    "int64", T.max(pos[0] - 1, 0))), dv * VEC + e]
            if pdl_wait:
                # the thread's K row and V row (key c * KC + t, as k_load's) into L2, a 128-byte line a prefetch:
                # what keeps the loads above before the wait in SASS (see the docstring). The row's index is
                # written out in each, not bound once: bound to a name (an int64 let), the same SASS property
                # held, but the address arithmetic stayed 64-bit (832 SASS instructions against 752, the wait
                # at the 136th against the 77th) and the kernel took 3.87 / 5.06 us a call instead of 3.58 /
                # 4.70, gpt2-xl's step 1424.6 us against 1406.6 (H200, trace_decode_h200_kv_prefetch.md)
                for ty in T.thread_binding(NY, thread="threadIdx.y"):
                    for tx in T.thread_binding(NX, thread="threadIdx.x"):
                        for li in T.serial(LINES):
                            with T.sblock("kv_prefetch"):
                                T.reads()
                                T.writes()
                                T.ptx.prefetch.global_.L2(T.address_of(k_cache[b // S, T.min((b % S) * KC + ty * NX + tx, T.Cast(
                                    "int64", T.max(pos[0] - 1, 0))), li * LINE]))
                                T.ptx.prefetch.global_.L2(T.address_of(v_cache[b // S, T.min((b % S) * KC + ty * NX + tx, T.Cast(
                                    "int64", T.max(pos[0] - 1, 0))), li * LINE]))
                read_coherently(NY, NX, T.address_of(qkv[0, 0]))
                grid_wait(NY, NX, next_at_once)
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("qk"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vt = T.axis.spatial(KC, ty * NX + tx)
                        q_row = T.sblock_alloc_buffer((D,), dtype, scope="local")
                        k_new = T.sblock_alloc_buffer((D,), dtype, scope="local")      # the new token's key
                        dot = T.sblock_alloc_buffer((1,), ACC, scope="local")
                        # every load first and unconditional, then the products: a load under a branch, or
                        # used as soon as it is issued, costs a memory latency of its own
                        for dv in T.unroll(DV):
                            for e in T.vectorized(VEC):
                                q_row[dv * VEC + e] = qkv[0, vh * D + dv * VEC + e]
                                k_new[dv * VEC + e] = qkv[0, C + vh * D + dv * VEC + e]
                        dot[0] = T.float32(0)
                        for d in T.unroll(D):
                            dot[0] = dot[0] + T.Cast(ACC, q_row[d]) * T.Cast(ACC, T.if_then_else(
                                vc * KC + vt < T.Cast("int64", pos[0]), k_reg[vh, vc, vt, d], k_new[d]))
                        s[vh, vc, vt] = T.if_then_else(vc * KC + vt <= T.Cast("int64", pos[0]), dot[0] * scale,
                                                       lowest)
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("c_max"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vt = T.axis.reduce(KC, ty * NX + tx)
                        with T.init():
                            c_max[vh, vc] = lowest
                        c_max[vh, vc] = T.max(c_max[vh, vc], s[vh, vc, vt])
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("exp"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vt = T.axis.spatial(KC, ty * NX + tx)
                        p[vh, vc, vt] = T.if_then_else(vc * KC + vt <= T.Cast("int64", pos[0]),
                                                       T.exp(s[vh, vc, vt] - c_max[vh, vc]), T.float32(0))
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("c_sum"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vt = T.axis.reduce(KC, ty * NX + tx)
                        with T.init():
                            c_sum[vh, vc] = T.float32(0)
                        c_sum[vh, vc] = c_sum[vh, vc] + p[vh, vc, vt]
            # partial[ty, d] = sum over the chunk's keys t = ty, ty + NY, ... of p[t] * v_j[d] (VEC d's a lane)
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("pv"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vy, vx = T.axis.spatial(NY, ty), T.axis.spatial(NX, tx)
                        acc = T.sblock_alloc_buffer((VEC,), ACC, scope="local")
                        v_all = T.sblock_alloc_buffer((JY * VEC,), dtype, scope="local")
                        v_new = T.sblock_alloc_buffer((VEC,), dtype, scope="local")
                        # 0 past pos -- not just p = 0, since 0 * a stale NaN would be NaN
                        for e in T.vectorized(VEC):
                            v_new[e] = qkv[0, C * 2 + vh * D + vx * VEC + e]
                        for jy in T.unroll(JY):
                            for e in T.vectorized(VEC):
                                v_all[jy * VEC + e] = T.if_then_else(
                                    vc * KC + jy * NY + vy < T.Cast("int64", pos[0]),
                                    v_reg[vh, vc, vy, vx, jy * VEC + e],
                                    T.if_then_else(vc * KC + jy * NY + vy == T.Cast("int64", pos[0]), v_new[e],
                                                   T.Cast(dtype, 0)))
                        for e in T.serial(VEC):
                            acc[e] = T.float32(0)
                        for jy in T.unroll(JY):
                            for e in T.serial(VEC):
                                acc[e] = acc[e] + p[vh, vc, jy * NY + vy] * T.Cast(ACC, v_all[jy * VEC + e])
                        for e in T.serial(VEC):
                            partial[vh, vc, vy, vx * VEC + e] = acc[e]
            for ty in T.thread_binding(NY, thread="threadIdx.y"):
                for tx in T.thread_binding(NX, thread="threadIdx.x"):
                    with T.sblock("part"):
                        vh, vc = T.axis.spatial(H, b // S), T.axis.spatial(S, b % S)
                        vd = T.axis.spatial(D, ty * NX + tx)
                        T.where(ty * NX + tx < D)
                        total = T.sblock_alloc_buffer((1,), ACC, scope="local")
                        total[0] = T.float32(0)
                        for g in T.serial(NY, annotations=unroll):
                            total[0] = total[0] + partial[vh, vc, g, vd]
                        o_part[vh, vc, vd] = total[0]
                        if vd == T.int64(0):
                            ml_part[vh, vc, 0] = c_max[vh, vc]
                            ml_part[vh, vc, 1] = c_sum[vh, vc]
        # --- kernel 2: merge the chunks, one block per head ---
        for bh in T.thread_binding(H, thread="blockIdx.x"):
            if pdl_wait:
                grid_wait(one, D, next_at_once)       # (threadIdx.y of extent 1)
            for tx in T.thread_binding(D, thread="threadIdx.x"):
                with T.sblock("merge"):
                    vh, vd = T.axis.spatial(H, bh), T.axis.spatial(D, tx)
                    ml = T.sblock_alloc_buffer((S * 2,), ACC, scope="local")
                    o = T.sblock_alloc_buffer((S,), ACC, scope="local")
                    m_all = T.sblock_alloc_buffer((1,), ACC, scope="local")
                    l_all = T.sblock_alloc_buffer((1,), ACC, scope="local")
                    o_all = T.sblock_alloc_buffer((1,), ACC, scope="local")
                    for c in T.unroll(S):            # every chunk's loads first, unconditional (see qk) ...
                        ml[c * 2] = ml_part[vh, c, 0]
                        ml[c * 2 + 1] = ml_part[vh, c, 1]
                        o[c] = o_part[vh, c, vd]
                    for c in T.unroll(S):            # ... then chunks past pos dropped (whatever they hold)
                        ml[c * 2] = T.if_then_else(c * KC <= T.Cast("int64", pos[0]), ml[c * 2], lowest)
                        ml[c * 2 + 1] = T.if_then_else(c * KC <= T.Cast("int64", pos[0]), ml[c * 2 + 1], T.float32(0))
                        o[c] = T.if_then_else(c * KC <= T.Cast("int64", pos[0]), o[c], T.float32(0))
                    m_all[0] = lowest
                    for c in T.unroll(S):
                        m_all[0] = T.max(m_all[0], ml[c * 2])
                    l_all[0] = T.float32(0)
                    o_all[0] = T.float32(0)
                    for c in T.unroll(S):            # chunks past pos: l = o = 0
                        l_all[0] = l_all[0] + ml[c * 2 + 1] * T.exp(ml[c * 2] - m_all[0])
                        o_all[0] = o_all[0] + o[c] * T.exp(ml[c * 2] - m_all[0])
                    out[0, vh * D + vd] = T.Cast(dtype, o_all[0] / l_all[0])
                    k_cache[vh, T.Cast("int64", pos[0]), vd] = qkv[0, C + vh * D + vd]
                    v_cache[vh, T.Cast("int64", pos[0]), vd] = qkv[0, C * 2 + vh * D + vd]

    return decode_attention


def _decode_attention_layout(head_dim: int, n_ctx: int, dtype: str = "float32",
                             max_lanes: int = 4) -> tuple[int, int, int, int, int]:
    """make_decode_attention's (VEC, NX, NY, KC, S): 4, 16, 4, 64, 16 for GPT-2 (head_dim 64, n_ctx 1024);
    in float16 with max_lanes = 8 (CUDA), 8, 8, 8, 64, 16: rows of K and V read 16 bytes a load."""
    # elements per vector load: at most max_lanes (WGSL's widest is vec4) and 16 bytes (CUDA's widest), dividing D
    vec = vector_width(head_dim, dtype, max_lanes)
    nx = head_dim // vec                                  # threadIdx.x: lanes across one row of K / V
    ny = max(1, 64 // nx)                                 # threadIdx.y: groups of keys in pv
    kc = nx * ny                                          # keys per chunk = threads per block
    assert kc >= head_dim, "the part stage writes one element d per thread"
    return vec, nx, ny, kc, -(-n_ctx // kc)


def decode_attention_parts(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32",
                           max_lanes: int = 4) -> list[tuple[list[int], str]]:
    """(shape, dtype) of make_decode_attention's scratch outputs o_part, ml_part (after `out`)."""
    s = _decode_attention_layout(head_dim, n_ctx, dtype, max_lanes)[-1]
    return [([n_head, s, head_dim], ACC), ([n_head, s, 2], ACC)]


def decode_attention_ref(qkv, k_cache, v_cache, pos):
    """Returns (out [1, C], k_cache, v_cache): the decode kernels above composed, at m = pos + 1."""
    m = pos + 1
    k_cache, v_cache = kv_append_ref(qkv, k_cache, v_cache, m)
    probs = causal_softmax_ref(attn_scores_ref(qkv, k_cache, m), k_cache.shape[2])      # float32, as decode's
    return attn_values_ref(probs, v_cache, qkv.dtype), k_cache, v_cache
