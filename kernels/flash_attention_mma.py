"""Prefill's causal attention on tensor cores as FlashAttention-2 lays it out (CUDA sm_80+, fp16, head_dim 64):
scripts/bench_flash_mma.py's raw CUDA kernel written in TVMScript. The math and the signature are
flash_attention.py's (make_flash_attention, whose numpy reference `flash_attention_ref` is the check):

    out[i, h*D + d] = sum_{j <= m - n + i} softmax_j(q[i, h] . k_cache[h, j] / sqrt(D)) * v_cache[h, j, d]

    qkv [n, 3C], k_cache, v_cache [H, n_ctx, 64] (the new tokens' K, V already appended), m  ->  out [n, C]

Rule entry `flash-prefill-mma` (preset `fused`). Measured on an H100 (docs/results/cuda_flash_mma_h100.md):
gpt2-xl's attention at n = m = 1024, 30.6 us a layer (110 TFLOP/s over the causal triangle) against 83.9 for the
WMMA kernel and 20.5 for torch SDPA; max abs error 1.95e-3 against the numpy reference, as theirs. Why it exists: flash_attention.py's
tensor-core variant goes through WMMA, whose fragments hide which lane holds which element, so each tile's S and
P V pass through shared memory to the lanes that own their rows; gpt2-xl's 1024-token prefill spends 4.5 of its
20.3 ms there on an H100 (~36 TFLOP/s; docs/results/README.md, nineteenth session). mma.sync's fragments have a
documented layout, so here S, the softmax and P never leave registers:

    block b  -> head h = b % H, query tile qt (the longest rows first): BQ = 64 queries, 4 warps of 16 rows
    lane     -> rows g = lane / 4 and g + 8 of its warp's 16; in each 8-wide column tile of an accumulator,
                columns 2t and 2t + 1 (t = lane % 4)
    Q's 16 x 64 a warp -> 4 A fragments (ldmatrix.x4), once
    for each key tile kt of BK = 64 keys, up to the last one a row of the tile sees:
      K, V tiles -> shared memory by cp.async, double-buffered (the next tile's copies in flight meanwhile;
                    rows past m read row m - 1: stale cache rows may hold NaN)
      S = Q K^T       8 column tiles x 4 k-steps of mma.m16n8k16; K's rows are B's columns (ldmatrix.x4)
      mask (causal, keys < m), scale by log2(e) / sqrt(D); the rows' max over the tile: a lane's 16 values,
                      then its quad's 4 lanes (two shuffles); m_new, alpha = 2^(m - m_new)
      P = 2^(S - m_new), rounded to fp16 (as HF rounds the probabilities before P V); the row sums of the
                      rounded values, a lane's part; column tiles 2k and 2k + 1 of S's accumulators *are* the
                      A fragment of P's k-step k (FA2's observation: no data moves between lanes)
      O = O * alpha + P V   4 k-steps x 8 column tiles; V's rows by ldmatrix.x4.trans
    out = O / l, for the rows i < n (l: the quad's parts summed).

Shared memory: Q [64, 72], K and V 2 x [64, 72] halves (rows padded by 8 halves: 16-byte aligned, and ldmatrix's
8 rows of a matrix fall in 8 different bank groups) = 45 KiB, flat buffers (TVM compacts a 2-D allocation to the
columns it reads, which would drop the padding).
"""

import math

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T

from ._dtypes import ACC, F32_MIN, seq_len_var
from ._mma import mma, pack

D_HEAD = 64
BQ, BK, WARPS, LANES = 64, 64, 4, 32
LD = D_HEAD + 8                                  # a row of a tile in shared memory, in halves
NTH = WARPS * LANES


def make_flash_attention_mma(n_head: int, head_dim: int, n_ctx: int, seq_len: int | None = None):
    """The kernel in this module's docstring (float16 only: mma.sync's f16 inputs, f32 accumulators)."""
    if head_dim != D_HEAD:
        raise RuleError(f"flash attention on mma.sync: head_dim {D_HEAD} only (got {head_dim})")
    H, D, P, C = n_head, head_dim, n_ctx, n_head * head_dim
    n = seq_len_var(seq_len)                     # new tokens: symbolic, or fixed (tests)
    scale_log2 = T.float32(math.log2(math.e) / math.sqrt(D))
    lowest = T.float32(F32_MIN)
    COPIES = BK * D // 8 // NTH                  # 16-byte copies a thread, for a K (or V) tile

    # index arithmetic, inlined where it is used
    def n_qt(n):
        return (n + BQ - 1) // BQ

    def head(b):
        return T.Cast("int64", b) % H

    def q0(b, n):                                # the tile's first query (the longest rows first)
        return (n_qt(n) - 1 - T.Cast("int64", b) // H) * BQ

    def row(b, n, w, tx, half):                  # this lane's row g (half 0) or g + 8 (half 1), absolute
        return q0(b, n) + T.Cast("int64", w * 16 + tx // 4 + half * 8)

    def n_kt(b, n, m):                           # key tiles up to the last the tile's last row sees
        return (T.min(q0(b, n) + BQ, n) - 1 + m - n) // BK + 1

    def key(kt, j, tx, e):                       # the key of S's column tile j, this lane's column e
        return kt * BK + T.Cast("int64", j * 8 + tx % 4 * 2 + e)

    def tile_row(buf, r):                        # the first half of row r of K's (or V's) buffer buf
        return (buf * BK + r) * LD

    @T.macro                                     # hygienic: COPIES, tile_row, head resolve here
    def load_tile(tile, cache, buf, kt, b, w, tx, m):
        """Keys [kt * BK, kt * BK + BK) of head h's cache -> tile's buffer buf: 16 bytes a cp.async, COPIES a thread."""
        for it in T.unroll(COPIES):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(tile[tile_row(buf, (it * NTH + w * LANES + tx) // 8) + (it * NTH + w * LANES + tx) % 8 * 8]),
                T.address_of(cache[head(b), T.min(kt * BK + T.Cast("int64", (it * NTH + w * LANES + tx) // 8), m - 1),
                                   (it * NTH + w * LANES + tx) % 8 * 8]), 16)

    @T.prim_func
    def flash_attention_mma(qkv_h: T.handle, k_cache: T.Buffer((H, P, D), "float16"),
                            v_cache: T.Buffer((H, P, D), "float16"), m: T.int64, out_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        qkv = T.match_buffer(qkv_h, (n, C * 3), "float16")         # [n, 3C]
        out = T.match_buffer(out_h, (n, C), "float16")             # [n, C]
        b = T.launch_thread("blockIdx.x", n_qt(n) * H)
        tx = T.launch_thread("threadIdx.x", LANES)
        w = T.launch_thread("threadIdx.y", WARPS)
        q_s = T.alloc_buffer((BQ * LD,), "float16", scope="shared")
        k_s = T.alloc_buffer((2 * BK * LD,), "float16", scope="shared")
        v_s = T.alloc_buffer((2 * BK * LD,), "float16", scope="shared")
        qa = T.alloc_buffer((D // 16 * 4,), "uint32", scope="local")    # Q: A fragments of D / 16 k-steps
        kb = T.alloc_buffer((4,), "uint32", scope="local")              # B fragments, two k-steps (K) or tiles (V)
        pa = T.alloc_buffer((BK // 16 * 4,), "uint32", scope="local")   # P: A fragments of BK / 16 k-steps
        s = T.alloc_buffer((BK // 8 * 4,), ACC, scope="local")          # S: 8 column tiles of 8 keys
        o = T.alloc_buffer((D // 8 * 4,), ACC, scope="local")           # O: 8 column tiles of 8 outputs
        ph = T.alloc_buffer((4,), "float16", scope="local")             # a column tile's probabilities
        m_i = T.alloc_buffer((2,), ACC, scope="local")                  # rows g, g + 8: running max (log2 units)
        l_i = T.alloc_buffer((2,), ACC, scope="local")                  # ... this lane's part of the running sum
        mx = T.alloc_buffer((2,), ACC, scope="local")                   # ... the tile's max, then the new max
        alpha = T.alloc_buffer((2,), ACC, scope="local")                # ... 2^(m_i - m_new)
        rs = T.alloc_buffer((2,), ACC, scope="local")                   # ... this lane's part of the tile's sum

        # Q's rows (past n: row n - 1, in bounds; their outputs are not written), K and V of the first tile
        for it in T.unroll(BQ * D // 8 // NTH):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(q_s[(it * NTH + w * LANES + tx) // 8 * LD + (it * NTH + w * LANES + tx) % 8 * 8]),
                T.address_of(qkv[T.min(q0(b, n) + T.Cast("int64", (it * NTH + w * LANES + tx) // 8), n - 1),
                                 head(b) * D + T.Cast("int64", (it * NTH + w * LANES + tx) % 8 * 8)]), 16)
        load_tile(k_s, k_cache, 0, T.int64(0), b, w, tx, m)
        load_tile(v_s, v_cache, 0, T.int64(0), b, w, tx, m)
        T.ptx.cp.async_.commit_group()
        for i in T.unroll(D // 8 * 4):
            o[i] = T.float32(0)
        for i in T.unroll(2):
            m_i[i] = lowest
            l_i[i] = T.float32(0)
        for kt in T.serial(n_kt(b, n, m)):
            if kt + 1 < n_kt(b, n, m):                                  # the next tile into the other buffers (their
                load_tile(k_s, k_cache, (kt + 1) % 2, kt + 1, b, w, tx, m)  # readers passed the last barrier)
                load_tile(v_s, v_cache, (kt + 1) % 2, kt + 1, b, w, tx, m)
            T.ptx.cp.async_.commit_group()
            T.ptx.cp.async_.wait_group(1)                              # this tile's copies (and Q's) landed
            T.tvm_storage_sync("shared")
            if kt == 0:                                                 # Q's fragments, once: rows 0-7 / 8-15 x
                for kk in T.unroll(D // 16):                            # k 0-7, then k 8-15
                    T.ptx.ldmatrix.sync.aligned.m8n8.x4.shared.b16(
                        qa[kk * 4], qa[kk * 4 + 1], qa[kk * 4 + 2], qa[kk * 4 + 3],
                        T.address_of(q_s[(w * 16 + tx % 16) * LD + kk * 16 + tx // 16 * 8]))
            # S = Q K^T: K's rows 8j.. x d 32kk.. as the B fragments of k-steps 2kk and 2kk + 1
            for j in T.unroll(BK // 8):
                for e in T.unroll(4):
                    s[j * 4 + e] = T.float32(0)
                for kk in T.unroll(D // 32):
                    T.ptx.ldmatrix.sync.aligned.m8n8.x4.shared.b16(
                        kb[0], kb[1], kb[2], kb[3],
                        T.address_of(k_s[tile_row(kt % 2, T.Cast("int64", j * 8 + tx % 8)) + kk * 32 + tx // 8 * 8]))
                    mma(s, j * 4, qa, 2 * kk * 4, kb[0], kb[1])
                    mma(s, j * 4, qa, (2 * kk + 1) * 4, kb[2], kb[3])
            # mask (causal: key <= the row's position m - n + row; keys < m), scale; the rows' max
            for i in T.unroll(2):
                mx[i] = lowest
            for j in T.unroll(BK // 8):
                for i in T.unroll(2):
                    for e in T.unroll(2):
                        s[j * 4 + i * 2 + e] = T.if_then_else(
                            key(kt, j, tx, e) <= row(b, n, w, tx, i) + m - n and key(kt, j, tx, e) < m,
                            s[j * 4 + i * 2 + e] * scale_log2, lowest)
                        mx[i] = T.max(mx[i], s[j * 4 + i * 2 + e])
            for i in T.unroll(2):                                       # the quad's 4 lanes hold the row
                for d in T.unroll(2):
                    mx[i] = T.max(mx[i], T.tvm_warp_shuffle_xor(T.uint32(0xFFFFFFFF), mx[i], 1 << d, 32, 32))
                mx[i] = T.max(m_i[i], mx[i])                            # m_new (finite: key 0 is in every row's
                alpha[i] = T.exp2(m_i[i] - mx[i])                      # first tile)
                m_i[i] = mx[i]
                rs[i] = T.float32(0)
            # P = 2^(S - m_new) in fp16: column tiles 2k, 2k + 1 -> a0, a1 / a2, a3 of P's k-step k
            for j in T.unroll(BK // 8):
                for i in T.unroll(2):
                    for e in T.unroll(2):
                        ph[i * 2 + e] = T.Cast("float16", T.exp2(s[j * 4 + i * 2 + e] - m_i[i]))
                        rs[i] = rs[i] + T.Cast(ACC, ph[i * 2 + e])
                    pa[j // 2 * 4 + j % 2 * 2 + i] = pack(ph[i * 2], ph[i * 2 + 1])
            for i in T.unroll(2):
                l_i[i] = l_i[i] * alpha[i] + rs[i]
            for j in T.unroll(D // 8):
                for e in T.unroll(4):
                    o[j * 4 + e] = o[j * 4 + e] * alpha[e // 2]
            # O += P V: V's keys 16kk.. x columns 16jd.., transposed: the B fragments of column tiles 2jd, 2jd + 1
            for kk in T.unroll(BK // 16):
                for jd in T.unroll(D // 16):
                    T.ptx.ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16(
                        kb[0], kb[1], kb[2], kb[3],
                        T.address_of(v_s[tile_row(kt % 2, T.Cast("int64", kk * 16 + tx % 8 + tx // 8 % 2 * 8))
                                         + jd * 16 + tx // 16 * 8]))
                    mma(o, 2 * jd * 4, pa, kk * 4, kb[0], kb[1])
                    mma(o, (2 * jd + 1) * 4, pa, kk * 4, kb[2], kb[3])
            T.tvm_storage_sync("shared")                                # the tile read: its buffers may refill
        # the rows' sums over the quad, then out = O / l for the rows < n
        for i in T.unroll(2):
            for d in T.unroll(2):
                l_i[i] = l_i[i] + T.tvm_warp_shuffle_xor(T.uint32(0xFFFFFFFF), l_i[i], 1 << d, 32, 32)
        for j in T.unroll(D // 8):
            for i in T.unroll(2):
                if row(b, n, w, tx, i) < n:
                    for e in T.unroll(2):
                        out[row(b, n, w, tx, i), head(b) * D + T.Cast("int64", j * 8 + tx % 4 * 2 + e)] = T.Cast(
                            "float16", o[j * 4 + i * 2 + e] / l_i[i])

    return flash_attention_mma
