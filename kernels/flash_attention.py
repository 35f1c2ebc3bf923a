"""Prefill's causal attention as one kernel ("flash attention"), written already scheduled for a GPU
(make_flash_attention) and for the CPU (make_flash_attention_cpu, at the end of this file).

The same math as attention.py's three kernels (attn_scores -> causal_softmax -> attn_values):

    out[i, h*D + d] = sum_{j <= m - n + i} softmax_j(q[i, h] . k_cache[h, j] / sqrt(D)) * v_cache[h, j, d]

    qkv [n, 3C] (q is columns [0, C)), k_cache, v_cache [H, n_ctx, D] (K, V of the new tokens already
    appended: kv_append runs first), m (the sequence length after the new tokens)  ->  out [n, C]

but the [H, n, m] scores never go through memory. The three kernels wrote and read them twice
(float32 scores, then the probabilities), over the whole square; at a 1024-token gpt2-xl prefill on
an H200 they took 13.1 ms of 32 (docs/results/README.md). Here one thread block takes BQ queries of
one head and walks the keys in tiles of BK, and only up to the diagonal: tiles wholly past every
query's causal limit are never visited (half the square at m = n).

    block b  -> head h = b % H, query tile qt (the longest rows first, so the last wave is short)
    warp w   -> 16 query rows of the tile;  lane -> row r = lane // 2 of them, half = lane % 2
    for each key tile kt <= the last one a row of the tile can see:
      1. K, V tile -> shared memory (every thread, VEC-element vector loads; on CUDA from registers
         loaded during the tile before, and the next tile's loads are issued right after)
      2. S = Q K^T for the warp's 16 rows               -> s_s  (tensor cores or CUDA cores, below)
      3. online softmax over the tile, per row (two lanes a row, each BK/2 keys):
           m_new = max(m_i, max_j s_j * scale),  alpha = exp(m_i - m_new)
           p_j = exp(s_j * scale - m_new) (0 past the row's causal limit), rounded to dtype -> p_s
           l_i = l_i * alpha + sum_j p_j
      4. PV = P V for the warp's 16 rows                -> s_s (the scores are used up by then)
      5. o = o * alpha + PV  (each lane keeps D/2 of its row's outputs in registers)
    out = o / l_i, for the rows i < n.

Steps 2 and 4 are the matmuls. With `tensor_cores` (CUDA, float16) they are WMMA 16x16x16 fragment
products (fp16 in, fp32 accumulate): the warp's Q is loaded into D/16 fragments once, K (as K^T,
column-major) and P, V from shared memory each tile. WMMA hides which lane holds which element of a
fragment, so the results go through shared memory (s_s) to the lanes that own the rows: that is why
the softmax and the rescaling of o work on s_s, not on fragments. Without tensor cores (WebGPU,
float32, or a head_dim that is no multiple of 16) each lane computes its row's BK/2 scores and D/2
outputs as plain dot products, one warp a block and BK = 32 (WebGPU's workgroup memory): the same
algorithm, which is what the WebGPU tests check against numpy. With `registers` (CUDA) a lane keeps its
row of Q (loaded once), its BK/2 scores and its row's BK probabilities in registers, and steps 4 and 5
are one: o = o * alpha, then o += p_j v_j over the tile's keys. The products then read only K's and V's
rows from shared memory, the same row for every lane of a half (a broadcast), and nvcc reads them 16
bytes at a time; s_s is not used. Fully unrolled, that shader takes llvmpipe 30-50 s to compile (~1 s
without), so WebGPU keeps the first version: operands read from shared memory for every product, the
scores and P V through s_s.

Probabilities are rounded to dtype before P V, as Hugging Face does (`attn_weights.type(value.dtype)`),
but here before the division by the row's sum, which comes at the end (flash attention's order): in
float16 the two differ by about one rounding of p.

Keys past m (the cache beyond the sequence holds stale values, possibly NaN) are never read: their
rows are loaded as row m - 1 and masked out of the softmax (p = 0 times a finite v).

Shared memory (CUDA, fp16, D = 64, 2 warps: BQ = 32, BK = 64): q_s [32, 72], k_s, v_s [64, 72] fp16
(rows padded by 8 halves: 16-byte aligned, fewer bank conflicts) and s_s [32, 68] fp32 = 31 KiB as
written, under the 48 KiB of static shared memory a CUDA kernel may have (TVM's storage rewrite then
puts k_s in q_s's memory, dead once Q is in fragments: 27 KiB). p_s, the probabilities, reuses k_s:
K is no longer needed once S is computed, and the next tile's K is stored after P V is done (for head
dimensions under BK, k_s gets the extra rows p_s needs).

Without tensor cores the rows of q_s, k_s, v_s, s_s and p_s are padded by one float to odd strides: two
lanes a row, a warp reads 16 rows at once, which rows of 64 (or 32) floats put in one bank. TVM compacts
an allocation to the part of it that is read ([16, 65] to [16, 64]), so q_s, v_s and s_s are views of
flat allocations, which it keeps whole. gpt2-xl's 1024-token attention in float32 on an H200: 795 ->
473 us a call (scripts/bench_flash.py --dtype float32). With `registers` only p_s is read a row a lane
(odd stride kept), K and V a row a warp (rows of D + 4: 16-byte aligned): 473 -> 391 us a call, gpt2-xl's
fp32 prefill@1024 8.0k -> 8.4k tok/s (docs/results/bench_flash_kernel_h200.md, last section).

Measured on an H200 (fp16, n = m = 1024, scripts/bench_flash.py, one call; docs/results/README.md):
gpt2-xl's 25 heads 92.8 us with 4 warps (BQ = 64), 92.4 with the K/V prefetch, 98.1 with 2 warps
without it and 82.6 with both (kept: twice the blocks, and the loads hidden), 111.4 with 4 warps and
BK = 32; gpt2's 12 heads 69.9 -> 62.3 us. The three kernels it replaces took 272 us a layer for gpt2-xl
(attn_scores 112, causal_softmax 70, attn_values 90): a 1024-token gpt2-xl prefill went from 29.7k to
40.4k tok/s (HF eager 34.1k in the same run; 40.2k against HF eager's 44.6k in a second run).
"""

import math

import numpy as np

from tinygpt2.tvm_shim import T

from ._cpu_math import exp_poly
from ._dtypes import ACC, F32_MIN, check_dtype, seq_len_var
from .attention import attention_ref

ROWS = 16                                    # query rows a warp owns (a WMMA fragment's height)
LANES = 32                                   # threads a warp (two a row)


def flash_layout(head_dim: int, dtype: str, tensor_cores: bool, warps: int | None = None, bk: int | None = None,
                 prefetch: bool = True, pad: int | None = None, registers: bool = True) -> dict[str, int]:
    """The tile sizes: warps a block, BQ queries and BK keys a tile, vector width, padded strides.
    (warps, bk): 2 and 64 with tensor cores, 1 and 32 without, unless asked otherwise (scripts/bench_flash.py);
    prefetch: the next key tile's K, V loaded into registers while this one is computed; pad: the
    elements added to each row of shared memory (8 with tensor cores, 1 without; scripts/bench_flash.py);
    registers: the CUDA-core variant's lanes keep their row of Q, their scores and their row's
    probabilities in registers (False: read from shared memory for every product, its first version)."""
    if tensor_cores:                         # 2 warps of 16 rows, keys in tiles of 64, 16-byte loads
        warps, bk, vec = warps or 2, bk or 64, 16 // np.dtype(dtype).itemsize
    else:                                    # WebGPU: a vec4 at most, and 32 KiB of workgroup memory on llvmpipe
        warps, bk, vec = warps or 1, bk or 32, next(v for v in (4, 2) if head_dim % v == 0)
    assert head_dim % (16 if tensor_cores else 2) == 0, f"head_dim {head_dim}: 16 x 16 fragments / two lanes a row"
    # WMMA wants strides that are whole 16-byte units. Without it, the 16 rows a warp reads at once lie a
    # row apart in shared memory (two lanes a row): rows of 64 (or 32) floats would put all 16 in one bank,
    # a 16-way conflict on every read of q_s, s_s and p_s; an odd stride puts them in 16 banks
    pad = (8 if tensor_cores else 1) if pad is None else pad
    # ... but with its operands in registers, the CUDA-core variant reads q_s once a block and k_s, v_s a row
    # (or two) a warp at a time: rows of 16-byte units there, which nvcc may read 16 bytes at a time
    regs = bool(registers and not tensor_cores)
    lay = dict(warps=warps, bq=ROWS * warps, bk=bk, vec=vec, prefetch=bool(prefetch and tensor_cores),
               registers=regs,
               dp=head_dim + (4 if regs else pad),   # row stride of q_s, k_s, v_s
               pp=bk + pad,                  # row stride of p_s, which lives in k_s's memory
               sp=max(bk, head_dim) + (4 if tensor_cores else pad))   # row stride of s_s (scores, then P V)
    # k_s's rows: a key tile's, or as many as p_s [BQ, PP] needs where it is larger (head_dim < BK)
    lay["k_rows"] = max(bk, -(-lay["bq"] * lay["pp"] // lay["dp"]))
    return lay


def make_flash_attention(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float16",
                         tensor_cores: bool = False, registers: bool = True, seq_len: int | None = None, **tiles):
    """Causal attention of the n new queries over the cache, one kernel (the module docstring).
    registers: without tensor cores, a lane's operands in registers (flash_layout); tiles: flash_layout's
    warps and bk (the tensor-core variant's tile sizes), pad."""
    check_dtype(dtype)
    assert not tensor_cores or dtype == "float16", "WMMA here is fp16 x fp16 -> fp32"
    lay = flash_layout(head_dim, dtype, tensor_cores, registers=registers, **tiles)
    W, BQ, BK, VEC, DP, PP, SP, KR = (lay[k] for k in ("warps", "bq", "bk", "vec", "dp", "pp", "sp", "k_rows"))
    regs = lay["registers"]                              # CUDA cores: a lane's operands in registers
    NT = W * LANES                                       # threads a block
    H, D, P, C = n_head, head_dim, n_ctx, n_head * head_dim
    HALF_K, HALF_D = BK // 2, D // 2                     # a lane's keys of a tile, its outputs of a row
    FD, FK = D // 16, BK // 16                           # 16 x 16 fragments along D and along a key tile
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)
    tc = tensor_cores
    n = seq_len_var(seq_len)                             # new tokens: symbolic, or fixed (tests)
    # WebGPU: TVM's StorageRewrite turns a shared buffer written in vec4s into an array of vec4s, and
    # then fails on the scalar reads of the dot products; element by element there
    vectorized = T.vectorized if tc else T.serial

    # index arithmetic, inlined where it is used (TVMScript would make `x = expr` a buffer of its own)
    def n_qt(n):                                         # query tiles a head
        return (n + BQ - 1) // BQ

    def head(b):
        return T.Cast("int64", b) % H

    def q_tile(b, n):                                    # the longest rows first: the last wave is short
        return n_qt(n) - 1 - T.Cast("int64", b) // H

    def tid(tx, w):
        return T.Cast("int64", w * LANES + tx)

    def row(tx, w):                                      # this lane's row of the tile
        return T.Cast("int64", w * ROWS + tx // 2)

    def half(tx):                                        # which half of the row's keys (and outputs) it owns
        return T.Cast("int64", tx % 2)

    def visible(j, b, tx, w, n, m):                      # key j <= the row's absolute position m - n + i
        return j <= m - n + q_tile(b, n) * BQ + row(tx, w)

    def n_kt(b, n, m):                                   # key tiles up to the last the tile's last row sees
        return (m - n + T.min(q_tile(b, n) * BQ + BQ, n) + BK - 1) // BK

    def unless_regs(buf, other):                         # (a Python choice, made as the kernel is written)
        return other if regs else buf

    def score(s_s, s_r, c, tx, w):                       # this lane's score c of the tile (not yet scaled)
        return s_r[c] if regs else s_s[row(tx, w), half(tx) * HALF_K + c]

    def vec_row(it, tx, w):                              # vector `it * NT + tid` of a [rows, D] tile: its row
        return (it * NT + tid(tx, w)) // (D // VEC)

    def vec_col(it, tx, w, e):                           # ... and its element e's column
        return (it * NT + tid(tx, w)) % (D // VEC) * VEC + e

    def vec_in(it, tx, w, rows):                         # whether that vector is in the tile (a last, partial pass)
        return it * NT + tid(tx, w) < rows * D // VEC

    KV_PASSES = (BK * D // VEC + NT - 1) // NT         # vector loads a thread, for a K (or V) tile
    prefetch = lay["prefetch"]

    @T.macro(hygienic=False)
    def kv_to_registers(kt):
        """K and V of tile kt -> this thread's registers k_r, v_r (its vectors of the tile)."""
        for it in T.unroll(KV_PASSES):
            if vec_in(it, tx, w, BK):
                for e in vectorized(VEC):
                    k_r[it * VEC + e] = k_cache[head(b), T.min(kt * BK + vec_row(it, tx, w), m - 1),
                                                vec_col(it, tx, w, e)]
                    v_r[it * VEC + e] = v_cache[head(b), T.min(kt * BK + vec_row(it, tx, w), m - 1),
                                                vec_col(it, tx, w, e)]

    @T.prim_func
    def flash_attention(qkv_h: T.handle, k_cache: T.Buffer((H, P, D), dtype), v_cache: T.Buffer((H, P, D), dtype),
                        m: T.int64, out_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        qkv = T.match_buffer(qkv_h, (n, C * 3), dtype)               # [n, 3C]
        out = T.match_buffer(out_h, (n, C), dtype)                   # [n, C]
        b = T.launch_thread("blockIdx.x", n_qt(n) * H)
        tx = T.launch_thread("threadIdx.x", LANES)
        w = T.launch_thread("threadIdx.y", W)
        # q_s, v_s, s_s: views of flat allocations, which TVM keeps whole (an allocation of [rows, stride]
        # would be compacted to the columns read, [rows, D], and lose the padding; k_s keeps it, p_s a view)
        q_mem = T.alloc_buffer((BQ * DP,), dtype, scope="shared")
        v_mem = T.alloc_buffer((BK * DP,), dtype, scope="shared")
        s_mem = T.alloc_buffer((BQ * SP,), ACC, scope="shared")
        q_s = T.decl_buffer((BQ, DP), dtype, data=q_mem.data, scope="shared")
        k_s = T.alloc_buffer((KR, DP), dtype, scope="shared")
        v_s = T.decl_buffer((BK, DP), dtype, data=v_mem.data, scope="shared")
        # the tile's scores, then its P V (with regs neither: a view of q_s's memory, never read or written,
        # since TVM drops an allocation nothing uses but not a view of it)
        s_s = T.decl_buffer((BQ, SP), ACC, data=unless_regs(s_mem, q_mem).data, scope="shared")
        p_s = T.decl_buffer((BQ, PP), dtype, data=k_s.data, scope="shared")   # probabilities: k_s's memory
        trade = T.alloc_buffer((BQ, 2), ACC, scope="shared")        # the two lanes of a row trade values here
        o = T.alloc_buffer((HALF_D,), ACC, scope="local")            # this lane's D/2 outputs, unnormalized
        m_i = T.alloc_buffer((1,), ACC, scope="local")               # the row's running max (of scaled scores)
        l_i = T.alloc_buffer((1,), ACC, scope="local")               # this lane's half of the running sum
        m_new = T.alloc_buffer((1,), ACC, scope="local")
        alpha = T.alloc_buffer((1,), ACC, scope="local")             # exp(m_i - m_new): o and l_i's rescaling
        p = T.alloc_buffer((1,), ACC, scope="local")
        dot = T.alloc_buffer((1,), ACC, scope="local")
        q_r = T.alloc_buffer((D,), ACC, scope="local")               # regs: the row's Q, for every key tile
        s_r = T.alloc_buffer((HALF_K,), ACC, scope="local")          # regs: this lane's scores of the tile
        p_r = T.alloc_buffer((BK,), ACC, scope="local")              # regs: the row's probabilities, both halves
        q_frag = T.alloc_buffer((FD * 16, 16), dtype, scope="wmma.matrix_a")
        k_frag = T.alloc_buffer((16, 16), dtype, scope="wmma.matrix_b")
        p_frag = T.alloc_buffer((16, 16), dtype, scope="wmma.matrix_a")
        v_frag = T.alloc_buffer((16, 16), dtype, scope="wmma.matrix_b")
        acc = T.alloc_buffer((max(FK, FD) * 16, 16), ACC, scope="wmma.accumulator")   # S's FK, then PV's FD
        k_r = T.alloc_buffer((KV_PASSES * VEC,), dtype, scope="local")      # K, V on their way to shared memory
        v_r = T.alloc_buffer((KV_PASSES * VEC,), dtype, scope="local")

        # Q of the tile -> q_s (rows past n read row n - 1: in bounds, their outputs are not written)
        for it in T.unroll((BQ * D // VEC + NT - 1) // NT):
            if vec_in(it, tx, w, BQ):
                for e in vectorized(VEC):
                    q_s[vec_row(it, tx, w), vec_col(it, tx, w, e)] = qkv[
                        T.min(q_tile(b, n) * BQ + vec_row(it, tx, w), n - 1), head(b) * D + vec_col(it, tx, w, e)]
        for c in T.unroll(HALF_D):
            o[c] = T.float32(0)
        m_i[0] = lowest
        l_i[0] = T.float32(0)
        T.tvm_storage_sync("shared")
        if regs:    # the lane's row of Q into registers, kept for every key tile
            for d in T.unroll(D):
                q_r[d] = T.Cast(ACC, q_s[row(tx, w), d])
        if tc:      # the warp's 16 rows of Q as D/16 fragments, kept for every key tile
            for f in T.unroll(FD):
                T.tvm_load_matrix_sync(q_frag.data, 16, 16, 16, f, T.tvm_access_ptr(
                    T.type_annotation(dtype), q_s.data, w * ROWS * DP + f * 16, ROWS * DP, 1), DP, "row_major")

        if prefetch:
            kv_to_registers(0)
        for kt in T.serial(n_kt(b, n, m)):
            # 1. K and V of the tile -> shared memory (keys past m read row m - 1, masked in step 3)
            T.tvm_storage_sync("shared")
            if not prefetch:    # this tile's loads now; with prefetch the last tile issued them
                kv_to_registers(kt)
            for it in T.unroll(KV_PASSES):
                if vec_in(it, tx, w, BK):
                    for e in vectorized(VEC):
                        k_s[vec_row(it, tx, w), vec_col(it, tx, w, e)] = k_r[it * VEC + e]
                        v_s[vec_row(it, tx, w), vec_col(it, tx, w, e)] = v_r[it * VEC + e]
            if prefetch:        # the next tile's loads go out, in flight while this tile is computed
                kv_to_registers(kt + 1)         # (past the last tile: row m - 1 again, unused)
            T.tvm_storage_sync("shared")
            # 2. S = Q K^T, the warp's 16 rows x BK keys -> s_s
            if tc:
                for f in T.unroll(FK):
                    T.tvm_fill_fragment(acc.data, 16, 16, 16, f, T.float32(0))
                    for kk in T.unroll(FD):       # K^T's 16 x 16 block (kk, f) is K's block (f, kk), column-major
                        T.tvm_load_matrix_sync(k_frag.data, 16, 16, 16, 0, T.tvm_access_ptr(
                            T.type_annotation(dtype), k_s.data, f * 16 * DP + kk * 16, 16 * DP, 1), DP, "col_major")
                        T.tvm_mma_sync(acc.data, f, q_frag.data, kk, k_frag.data, 0, acc.data, f)
                    T.tvm_store_matrix_sync(acc.data, 16, 16, 16, f, T.tvm_access_ptr(
                        T.type_annotation(ACC), s_s.data, w * ROWS * SP + f * 16, ROWS * SP, 2), SP, "row_major")
            elif regs:  # a key's row of K is read by the warp's lanes of one half at once: a broadcast
                for c in T.unroll(HALF_K):
                    s_r[c] = T.float32(0)
                    for d in T.unroll(D):
                        s_r[c] = s_r[c] + q_r[d] * T.Cast(ACC, k_s[half(tx) * HALF_K + c, d])
            else:
                for c in T.serial(HALF_K):
                    dot[0] = T.float32(0)
                    for d in T.unroll(D):
                        dot[0] = dot[0] + T.Cast(ACC, q_s[row(tx, w), d]) * T.Cast(ACC, k_s[half(tx) * HALF_K + c, d])
                    s_s[row(tx, w), half(tx) * HALF_K + c] = dot[0]
            if not regs:    # (with regs the barrier after the trade below is the one p_s, in k_s's memory, needs)
                T.tvm_storage_sync("shared")
            # 3. online softmax: the tile's max of the row (this lane's half, then the other lane's) ...
            m_new[0] = lowest
            for c in T.unroll(HALF_K):
                m_new[0] = T.max(m_new[0], T.if_then_else(visible(kt * BK + half(tx) * HALF_K + c, b, tx, w, n, m),
                                                          score(s_s, s_r, c, tx, w) * scale, lowest))
            trade[row(tx, w), half(tx)] = m_new[0]
            T.tvm_storage_sync("shared")
            # ... then m_new, alpha = exp(m_i - m_new), p = exp(s - m_new) rounded to dtype -> p_s, and l_i
            m_new[0] = T.max(m_i[0], T.max(trade[row(tx, w), 0], trade[row(tx, w), 1]))
            alpha[0] = T.exp(m_i[0] - m_new[0])
            m_i[0] = m_new[0]
            l_i[0] = l_i[0] * alpha[0]
            for c in T.unroll(HALF_K):
                p[0] = T.Cast(ACC, T.Cast(dtype, T.if_then_else(
                    visible(kt * BK + half(tx) * HALF_K + c, b, tx, w, n, m),
                    T.exp(score(s_s, s_r, c, tx, w) * scale - m_i[0]), T.float32(0))))
                p_s[row(tx, w), half(tx) * HALF_K + c] = T.Cast(dtype, p[0])
                l_i[0] = l_i[0] + p[0]
            T.tvm_storage_sync("shared")
            # 4. P V, the warp's 16 rows x D -> s_s, and 5. o = o * alpha + P V
            if regs:    # straight into o: the row's probabilities into registers, then V's rows (a broadcast)
                for j in T.unroll(BK):
                    p_r[j] = T.Cast(ACC, p_s[row(tx, w), j])
                for c in T.unroll(HALF_D):
                    o[c] = o[c] * alpha[0]
                for j in T.unroll(BK):
                    for c in T.unroll(HALF_D):
                        o[c] = o[c] + p_r[j] * T.Cast(ACC, v_s[j, half(tx) * HALF_D + c])
            else:
                if tc:
                    for f in T.unroll(FD):
                        T.tvm_fill_fragment(acc.data, 16, 16, 16, f, T.float32(0))
                        for kk in T.unroll(FK):
                            T.tvm_load_matrix_sync(p_frag.data, 16, 16, 16, 0, T.tvm_access_ptr(
                                T.type_annotation(dtype), p_s.data, w * ROWS * PP + kk * 16, ROWS * PP, 1), PP,
                                "row_major")
                            T.tvm_load_matrix_sync(v_frag.data, 16, 16, 16, 0, T.tvm_access_ptr(
                                T.type_annotation(dtype), v_s.data, kk * 16 * DP + f * 16, 16 * DP, 1), DP,
                                "row_major")
                            T.tvm_mma_sync(acc.data, f, p_frag.data, 0, v_frag.data, 0, acc.data, f)
                        T.tvm_store_matrix_sync(acc.data, 16, 16, 16, f, T.tvm_access_ptr(
                            T.type_annotation(ACC), s_s.data, w * ROWS * SP + f * 16, ROWS * SP, 2), SP, "row_major")
                else:
                    for c in T.serial(HALF_D):
                        dot[0] = T.float32(0)
                        for j in T.unroll(BK):
                            dot[0] = dot[0] + T.Cast(ACC, p_s[row(tx, w), j]) * T.Cast(ACC, v_s[j, half(tx) * HALF_D + c])
                        s_s[row(tx, w), half(tx) * HALF_D + c] = dot[0]
                T.tvm_storage_sync("shared")
                for c in T.unroll(HALF_D):
                    o[c] = o[c] * alpha[0] + s_s[row(tx, w), half(tx) * HALF_D + c]

        # l of the row = this lane's half + the other lane's; out = o / l for the rows i < n
        T.tvm_storage_sync("shared")
        trade[row(tx, w), half(tx)] = l_i[0]
        T.tvm_storage_sync("shared")
        if q_tile(b, n) * BQ + row(tx, w) < n:
            for c in T.unroll(HALF_D):
                out[q_tile(b, n) * BQ + row(tx, w), head(b) * D + half(tx) * HALF_D + c] = T.Cast(
                    dtype, o[c] / (trade[row(tx, w), 0] + trade[row(tx, w), 1]))

    return flash_attention


# --- the CPU: one query row a task, its scores in a row buffer -------------------------------------------
#
# On the CPU the three kernels (tuned: dot-products' q . k, hand-softmax, weighted-rows' p . V) run over the
# whole [H, n, m] square, the masked half included, and write and read the scores and probabilities through
# memory: gpt2's attention at 512 tokens took 18.8 ms a layer in the model's profile on the 2-core Xeon
# (q . k 11.7, the softmax 2.4, p . V 4.6); this kernel 5.3. A CPU core has no shared memory to tile into,
# but a row of scores fits its L1 cache: n_ctx floats, 4 KiB for GPT-2. So each task takes one query row,
# and the softmax is the plain two-pass one (no online rescaling), over that row buffer.


def make_flash_attention_cpu(n_head: int, head_dim: int, n_ctx: int, dtype: str = "float32",
                             seq_len: int | None = None, lanes: int = 16):
    """Causal attention of the n new queries over the cache, one kernel for the CPU (the module docstring's
    math and signature):

        for each row (h, i), a parallel task; kept = m - n + i + 1 keys, j < kept (the rest never read):
          1. s[j] = q_i . k_j            D in vectors of L floats, the L partial sums folded in halves
          2. p = softmax(s / sqrt(D))    max, exp (_cpu_math.exp_poly), sum: whole vectors of L and a rest
             (attention.make_causal_softmax_cpu's passes, here in place over the row buffer);
             p[j] rounded to dtype after the division, as attention_ref (and Hugging Face) round it
          3. out[i, h*D:(h+1)*D] = sum_j p[j] v_j     the row of D outputs held in vector registers

    L = `lanes` (16: one AVX-512 register of float32), halved until it divides head_dim. The row buffer s is
    n_ctx floats; TVM takes it from its per-thread workspace pool for each task (allocations over 1 KiB are
    not put on the stack; tasks of 8 or 32 rows, one allocation each, took 5.7 and 4.3 ms against this
    one's 4.6-4.9 at n = m = 512: not kept). Rows are numbered head-major (row = h * n + i), so that each
    of TVM's threads, given a contiguous range of rows, gets whole heads: short and long rows alike.
    """
    check_dtype(dtype)
    L = lanes
    while head_dim % L:
        L //= 2
    H, D, P, C = n_head, head_dim, n_ctx, n_head * head_dim
    scale = T.float32(1.0 / math.sqrt(head_dim))
    lowest = T.float32(F32_MIN)
    n = seq_len_var(seq_len)

    @T.macro(hygienic=False)
    def fold(width):                                    # lane[d] += lane[d + width], d < width
        for d in T.vectorized(width):
            lane[d] = lane[d] + lane[d + width]

    @T.prim_func(s_tir=True)
    def flash_attention(qkv_h: T.handle, k_cache: T.Buffer((H, P, D), dtype), v_cache: T.Buffer((H, P, D), dtype),
                        m: T.int64, out_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        qkv = T.match_buffer(qkv_h, (n, C * 3), dtype)               # [n, 3C]
        out = T.match_buffer(out_h, (n, C), dtype)                   # [n, C]
        for row in T.parallel(H * n):
            with T.sblock("row"):
                vr = T.axis.spatial(H * n, row)
                T.reads(qkv[vr % n, 0:C], k_cache[vr // n, 0:P, 0:D], v_cache[vr // n, 0:P, 0:D])
                T.writes(out[vr % n, 0:C])
                s = T.sblock_alloc_buffer((P,), ACC)         # [n_ctx] the row's scores, then probabilities
                lane = T.sblock_alloc_buffer((L,), ACC)      # [L] partial sums / maxima
                o = T.sblock_alloc_buffer((D,), ACC)         # [D] the row's outputs
                stat = T.sblock_alloc_buffer((2,), ACC)      # the row's max score, its sum of exp
                h = vr // n
                i = vr % n
                kept = m - n + i + T.int64(1)                # keys j < kept are attended to
                whole = kept // L * L                        # the keys in whole vectors
                # 1. scores
                for j in range(kept):
                    for d in T.vectorized(L):
                        lane[d] = T.float32(0)
                    for dc in T.unroll(D // L):
                        for d in T.vectorized(L):
                            lane[d] = lane[d] + T.Cast(ACC, qkv[i, h * D + dc * L + d]) * T.Cast(ACC, k_cache[h, j, dc * L + d])
                    fold(L // 2)                               # (a Python `if`: which folds L needs)
                    if L >= 4:
                        fold(L // 4)
                    if L >= 8:
                        fold(L // 8)
                    if L >= 16:
                        fold(L // 16)
                    s[j] = lane[0]
                # 2. softmax: max, exp in place, sum, p rounded to dtype
                for d in T.vectorized(L):
                    lane[d] = lowest
                for jo in range(kept // L):
                    for d in T.vectorized(L):
                        lane[d] = T.max(lane[d], s[jo * L + d])
                stat[0] = lowest
                for d in range(L):
                    stat[0] = T.max(stat[0], lane[d])
                for j in range(kept - whole):
                    stat[0] = T.max(stat[0], s[whole + j])
                for jo in range(kept // L):
                    for d in T.vectorized(L):
                        s[jo * L + d] = exp_poly((s[jo * L + d] - stat[0]) * scale)
                for j in range(kept - whole):
                    s[whole + j] = exp_poly((s[whole + j] - stat[0]) * scale)
                for d in T.vectorized(L):
                    lane[d] = T.float32(0)
                for jo in range(kept // L):
                    for d in T.vectorized(L):
                        lane[d] = lane[d] + s[jo * L + d]
                stat[1] = T.float32(0)
                for d in range(L):
                    stat[1] = stat[1] + lane[d]
                for j in range(kept - whole):
                    stat[1] = stat[1] + s[whole + j]
                for jo in range(kept // L):
                    for d in T.vectorized(L):
                        s[jo * L + d] = T.Cast(ACC, T.Cast(dtype, s[jo * L + d] / stat[1]))
                for j in range(kept - whole):
                    s[whole + j] = T.Cast(ACC, T.Cast(dtype, s[whole + j] / stat[1]))
                # 3. p . V
                for d in T.vectorized(D):
                    o[d] = T.float32(0)
                for j in range(kept):
                    for d in T.vectorized(D):
                        o[d] = o[d] + s[j] * T.Cast(ACC, v_cache[h, j, d])
                for d in T.vectorized(D):
                    out[i, h * D + d] = T.Cast(dtype, o[d])

    return flash_attention


def flash_attention_ref(qkv, k_cache, v_cache, m):
    """The kernel's math: causal attention of the n new queries over the first m cached keys."""
    return attention_ref(qkv, k_cache, v_cache, m)
