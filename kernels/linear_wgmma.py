"""Prefill's linears on Hopper's warpgroup MMA (wgmma.mma_async; CUDA sm_90a, fp16): linear.py's three kernels,
written already scheduled, A and B read by the tensor cores straight from shared memory.

    y[i, j] = epilogue(sum_k x[i, k] * W[j, k] + b[j])         accumulated in float32

    x [n, K], W [N, K], b [N] (, r [n, N])  ->  y [n, N]         (epilogues as in linear_mma.py: bias, gelu, residual)

Why: on mma.sync (linear_mma.py) every operand goes through registers by ldmatrix, which caps the tile a warp can
hold, and the best tile ran at ~210 TFLOP/s on an H100 against cuBLAS's ~550 (docs/results/bench_matmul_mma_h100.md).
One wgmma is issued by a warpgroup (4 warps, 128 threads) for a 64 x BN x 16 product, reads both operands from
shared memory through 64-bit matrix descriptors, and runs asynchronously: the warps issue it, then wait for it
(wgmma.commit_group / wait_group) while the next tiles' copies are in flight. This is cuBLAS's instruction on
sm_90; its loads here are cp.async by every thread (no TMA, no warp specialisation: the simplest form that works;
what cuBLAS adds is in the results file below).

    block (bx, by) -> y's tile of BM = 64 WG rows (by) x BN columns (bx); WG warpgroups, warpgroup g owning rows
                      64g..64g+63 x all BN columns: BN / 2 float32 accumulators a thread
    x's BM x 64 and W's BN x 64 tiles of each K-step -> shared memory by cp.async, 16 bytes a copy, STAGES deep
                      (rows past n read row n - 1, rows past N row N - 1: their outputs are not written)
    for each K-step kt:
      wait for its copies (cp.async.wait_group); fence.proxy.async (cp.async writes through the generic proxy,
        wgmma reads through the async proxy); one barrier
      the copies of step kt + STAGES - 2, into the stage of step kt - 2: its products are complete (each warpgroup
        waited for them before the barrier; the stage of step kt - 1 may still be being read)
      wgmma.fence; 4 x wgmma m64nBNk16 (one per 16 of K); commit; wait until only this step's are in flight
        (wait_group 1): step kt's products run during step kt + 1's wait, barrier and copies
    epilogue (linear_mma.make_store): wgmma's accumulators are, warp by warp, mma.m16n8k16's: warp w of the block
      holds rows 16w..16w+15 of the tile, lane (g = lane / 4, t = lane % 4) rows g, g + 8 x columns 8j + 2t, + 1
      in acc[4j..4j+3] (PTX ISA, wgmma's register fragment D)

Shared memory (PTX ISA, "matrix descriptor", the 128-byte swizzle, K-major): a tile's row of 64 halves is 128 bytes,
8 chunks of 16; chunk c of row r lies at r * 128 + (c ^ r % 8) * 16 (so the 8 rows an 8 x 8 core matrix spans sit in
8 different bank groups, with no padding). A descriptor names a tile's start address (>> 4), the 1024 bytes between
groups of 8 rows (SBO, in 16-byte units: 64) and the swizzle mode; the hardware applies the XOR to the address bits,
so tiles must start 1024-byte aligned (the buffer is padded at run time to the next 1024-byte boundary), and the
k-th 16 of K is the same descriptor with 32 k bytes added to its start address (as CUTLASS's descriptor iterator).

Measured on an H100 (docs/results/bench_matmul_wgmma_h100.md): correct the first time it ran (36 numpy cases);
gpt2-xl's four linears x 48 layers at 1024 tokens in 8.6 ms with tile_for's first tiles (8.33 with today's, in the
same table), against 14.8 for DLight's WMMA schedule (tensor-core-matmul-async) and 6.7 for cuBLAS; its prefill@1024
56.3k -> 86.6k tok/s. Hence the rule entry `matmul-wgmma` leads preset `fused`. tile_for's cost model (below) then
took gpt2's prefill@1024 from 449-497k to 567-638k tok/s on an H200.
"""

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T

from ._dtypes import ACC, seq_len_var
from .linear_mma import EPILOGUES, LANES, linear_prim_func, make_store

WARPGROUP = 4 * LANES                           # threads issuing one wgmma
BK = 64                                         # halves of K a stage: one 128-byte swizzled row
ALIGN = 512                                     # halves: the 1024 bytes a swizzled tile's start is aligned to


def make_linear_wgmma(in_features: int, out_features: int, epilogue: str = "bias", seq_len: int | None = None,
                      tile_n: int = 128, warpgroups: int = 2, stages: int = 4):
    """The kernel in this module's docstring (float16 only). tile_n: BN, the tile's columns (a multiple of 8 up to
    256: wgmma's N); warpgroups: WG (the tile's rows are 64 WG); stages: K-steps of 64 in shared memory at once
    (>= 3: one being read by the wgmma in flight, one by those issued, the rest in flight from global memory)."""
    BN, WG, S = tile_n, warpgroups, stages
    if epilogue not in EPILOGUES:
        raise RuleError(f"linear on wgmma: epilogue is one of {EPILOGUES} (got {epilogue!r})")
    BM, NTH = 64 * WG, WG * WARPGROUP
    if BN % 8 or not 8 <= BN <= 256 or in_features % BK or S < 3 or BN * 8 % NTH or WG not in (1, 2):
        raise RuleError(f"linear on wgmma: tile_n a multiple of 8 up to 256 whose rows' 16-byte copies the threads "
                        f"share evenly, K ({in_features}) whole K-steps of {BK}, 1 or 2 warpgroups and stages >= 3 "
                        f"(tile_n {BN}, warpgroups {WG}, stages {S})")
    K, N = T.int64(in_features), T.int64(out_features)
    n = seq_len_var(seq_len)                     # new tokens: symbolic, or fixed (tests)
    CH = BK // 8                                 # 16-byte chunks in a row of a tile
    A_COPIES, B_COPIES = BM * CH // NTH, BN * CH // NTH
    KT = in_features // BK                       # K-steps
    STAGE = (BM + BN) * BK                       # halves a stage: x's tile, then W's (both multiples of 1024 bytes)
    NT = BN // 8                                 # a warp's accumulators: NT tiles of 16 x 8, 4 floats each
    SBO = 8 * BK * 2 // 16                       # bytes between 8-row groups, in the descriptor's 16-byte units
    SWIZZLE_128B = 3                             # T.cuda.wgmma.encode_matrix_descriptor's code for it

    def tid(w, tx):
        return w * LANES + tx

    def swizzled(r, c):                          # halves from a tile's start to chunk c of its row r
        return r * BK + T.bitwise_xor(c, r % 8) * 8

    def row(by, w, mt, tx, half):                # this lane's row g (half 0) or g + 8 (half 1), absolute (mt: 0)
        return T.Cast("int64", by * BM + w * 16 + tx // 4 + half * 8)

    def col(bx, w, nt, tx, e):                   # ... its column 2t + e of column tile nt
        return T.Cast("int64", bx * BN + nt * 8 + tx % 4 * 2 + e)

    def desc_at(desc, halves):                   # the descriptor of the tile `halves` past the aligned start
        return desc[0] + T.Cast("uint64", halves * 2 // 16)

    def wgmma(acc, a_desc, b_desc):              # acc += A B, one m64nBNk16 (a call of BN / 2 + 7 operands)
        op = getattr(T.ptx.wgmma.mma_async.sync.aligned, f"m64n{BN}k16").f32.f16.f16
        return op(*[acc[i] for i in range(NT * 4)], a_desc, b_desc, T.bool(True), 1, 1, 0, 0)

    @T.macro                                     # hygienic: the constants above resolve here
    def load_stage(smem, base, x, w_, kt, bx, by, w, tx):
        """K-step kt of x's rows and W's rows -> stage kt % S, swizzled: 16 bytes a cp.async."""
        for it in T.unroll(A_COPIES):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(smem[base + kt % S * STAGE + swizzled((it * NTH + tid(w, tx)) // CH,
                                                                   (it * NTH + tid(w, tx)) % CH)]),
                T.address_of(x[T.min(T.Cast("int64", by * BM + (it * NTH + tid(w, tx)) // CH), n - 1),
                               T.Cast("int64", kt * BK + (it * NTH + tid(w, tx)) % CH * 8)]), 16)
        for it in T.unroll(B_COPIES):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(smem[base + kt % S * STAGE + BM * BK + swizzled((it * NTH + tid(w, tx)) // CH,
                                                                             (it * NTH + tid(w, tx)) % CH)]),
                T.address_of(w_[T.min(T.Cast("int64", bx * BN + (it * NTH + tid(w, tx)) // CH), N - 1),
                                T.Cast("int64", kt * BK + (it * NTH + tid(w, tx)) % CH * 8)]), 16)

    @T.macro
    def mainloop(acc, smem, base, desc, x, w_, bx, by, w, tx):
        """acc = the warpgroup's 64 x BN of x W^T (the order in the module's docstring)."""
        for i in T.unroll(NT * 4):
            acc[i] = T.float32(0)
        for s in T.unroll(S - 2):                                       # the first S - 2 K-steps in flight
            if s < KT:
                load_stage(smem, base, x, w_, s, bx, by, w, tx)
            T.ptx.cp.async_.commit_group()
        for kt in T.serial(KT):
            T.ptx.cp.async_.wait_group(S - 3)                           # this thread's copies of step kt landed
            T.ptx.fence.proxy.async_.shared__cta()                      # ... and are visible to the async proxy
            T.tvm_storage_sync("shared")                                # everyone's; step kt - 2's wgmma done
            if kt + S - 2 < KT:
                load_stage(smem, base, x, w_, kt + S - 2, bx, by, w, tx)
            T.ptx.cp.async_.commit_group()                              # (empty groups keep the count uniform)
            T.ptx.wgmma.fence.sync.aligned()                            # acc's registers are the wgmma's now
            for kk in T.unroll(BK // 16):
                wgmma(acc, desc_at(desc, kt % S * STAGE + w // 4 * 64 * BK + kk * 16),
                      desc_at(desc, kt % S * STAGE + BM * BK + kk * 16))
            T.ptx.wgmma.commit_group.sync.aligned()
            T.ptx.wgmma.wait_group.sync.aligned(1)                      # step kt - 1's products complete
        T.ptx.wgmma.wait_group.sync.aligned(0)

    store = make_store(epilogue, n, N, 1, NT, row, col)

    @T.macro
    def body(x, w_, b32, r32, y):
        bx = T.launch_thread("blockIdx.x", (N + BN - 1) // BN)
        by = T.launch_thread("blockIdx.y", (n + BM - 1) // BM)
        tx = T.launch_thread("threadIdx.x", LANES)
        w = T.launch_thread("threadIdx.y", 4 * WG)
        smem = T.alloc_buffer((S * STAGE + ALIGN,), "float16", scope="shared.dyn")
        desc = T.alloc_buffer((1,), "uint64", scope="local")
        acc = T.alloc_buffer((NT * 4,), ACC, scope="local")
        T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 1)
        # halves from smem's start to its first 1024-byte boundary (the swizzle's period)
        base = T.Cast("int32", (1024 - T.cuda.cvta_generic_to_shared(T.address_of(smem[0])) % 1024) % 1024 // 2)
        T.cuda.wgmma.encode_matrix_descriptor(T.address_of(desc[0]), T.address_of(smem[base]), 1, SBO, SWIZZLE_128B)
        mainloop(acc, smem, base, desc, x, w_, bx, by, w, tx)
        store(y, acc, b32, r32, bx, by, w, tx)

    return linear_prim_func(body, epilogue, n, N, K, "linear_wgmma")


# tile_for's cost model (fitted to docs/results/bench_matmul_wgmma_h100.md)
SMS = 132                   # streaming multiprocessors of the sm_90a parts (H100 SXM, H200; the H100 PCIe has 114)
TILE_WIDTHS = (256, 192, 160, 128, 64)
TILE_OVERHEAD = 64          # a tile's cost beyond its BN columns, in columns: loading x's rows, the epilogue


def tile_cost(out_features: int, tile_n: int, rows: int, sms: int = SMS) -> int:
    """Relative time of a linear of out_features columns over `rows` rows of x in tiles of 128 x tile_n: the waves
    of blocks over the SMs (a partial last wave costs a whole one) times one tile's work, tile_n + TILE_OVERHEAD.
    A ragged last column of tiles costs a whole tile."""
    blocks = -(-rows // 128) * -(-out_features // tile_n)
    return -(-blocks // sms) * (tile_n + TILE_OVERHEAD)


def tile_for(out_features: int, rows: int = 1024) -> dict:
    """make_linear_wgmma's tile for a linear of out_features columns (the model's choice, `matmul-wgmma`): the BN of
    TILE_WIDTHS of least tile_cost at `rows` rows (the model passes its context, n_positions, where prefill's
    linears weigh most; the wider on a tie), two warpgroups (tiles of 128 rows), 4 stages (at most 4 x 48 KB with
    BN 256, within a block's 227 KB).

    The cost model picks, for gpt2-xl at 1024 tokens, the tile that measured fastest for each of its four linears on
    an H100 (docs/results/bench_matmul_wgmma_h100.md): qkv 160 (2 waves of 240 blocks), the two c_projs 128 (one
    wave of 104, the last column ragged), c_fc 256 (2 waves of 200); together 8.33 ms x 48 layers against 8.58
    for the widest BN dividing N, this function's first rule. Few blocks favour narrow tiles: gpt2's 768-wide
    c_proj makes 24 blocks of 128 x 256 at 1024 tokens, 96 of 128 x 64. In the model on an H200
    (docs/results/cuda_gpt2_gpt2-xl_h200_tile_for.md, two runs each): gpt2's prefill@1024 449-497k -> 567-638k tok/s,
    gpt2-xl's 85.9-88.0k -> 88.0-90.4k."""
    bn = min(TILE_WIDTHS, key=lambda bn: (tile_cost(out_features, bn, rows), -bn))
    return {"tile_n": bn, "warpgroups": 2, "stages": 4}
