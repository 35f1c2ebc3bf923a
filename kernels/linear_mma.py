"""Prefill's linears on tensor cores through mma.sync (CUDA sm_80+, fp16): linear.py's three kernels, written
already scheduled in the layout of flash_attention_mma.py (CUTLASS's multistage GEMM, without CUTLASS).

    y[i, j] = epilogue(sum_k x[i, k] * W[j, k] + b[j])         accumulated in float32

    x [n, K], W [N, K], b [N] (, r [n, N])  ->  y [n, N]
    epilogue "bias":     y = fp16(acc + b)                        (make_linear)
             "gelu":     y = fp16(gelu(acc + b))                  (make_linear_gelu)
             "residual": y = r + fp16(acc + b)                    (make_linear_residual)

The math, the signatures and the rounding are linear.py's, whose numpy references are the check. Why it exists:
DLight's tensor-core path (tinygpt2/tensor_core.py) goes through WMMA, and on an H100 gpt2-xl's four linears at
1024 tokens run at ~200 TFLOP/s there against cuBLAS's ~550 (docs/results/cuda_flash_mma_h100.md): 14.8 of the
model's 17.2 ms of prefill kernels. Here, as in FlashAttention-2's kernel, the fragments are mma.sync's, whose
lane layout is documented, loaded by ldmatrix from tiles that cp.async streams in:

    block (bx, by) -> C's tile of BM rows (by) x BN columns (bx); WM x WN warps, each owning TM x TN of it
                      (TM = BM / WM, TN = BN / WN): TM / 16 x TN / 8 accumulators of mma.m16n8k16
    x's BM x BK and W's BN x BK tiles of each K-step -> shared memory by cp.async, 16 bytes a copy, STAGES deep
                      (rows past n read row n - 1, rows past N row N - 1: their outputs are not written)
    for each K-step kt (CUTLASS's multistage order):
      at its first 16 of K:  the copies of step kt + STAGES - 1, into the stage step kt - 1 used (every warp read
                             it before the last barrier)
      before its last 16:    wait for step kt + 1's copies (cp.async.wait_group), one barrier
      for each 16 of K:      the next 16's fragments (of step kt + 1 after the last) into the other fragment
                             buffer: A by ldmatrix.x4 for each of the warp's 16-row tiles, B by ldmatrix.x4 for
                             each pair of its 8-column tiles (W's rows are B's columns); then this 16's
                             TM / 16 x TN / 8 mma.m16n8k16, which overlap those loads
    epilogue in registers: lane (g = lane / 4, t = lane % 4) holds rows g, g + 8 x columns 2t, 2t + 1 of each
                          accumulator; the bias, GELU or residual added there, two halves a 32-bit store.

Shared memory: STAGES x (BM + BN) rows of BK + 8 halves (rows padded by 8 halves: 16-byte aligned, and the 8 rows
of one ldmatrix matrix fall in 8 different bank groups), in dynamic shared memory (past 48 KiB).

Measured: its first version (one barrier a K-step, then all of a 16 of K's fragments, then the products; 16-bit
stores) matched numpy on an H100 and ran **slower than WMMA**: gpt2-xl's four linears x 48 layers at 1024 tokens
in 16.4 ms at best against 14.8 (docs/results/bench_matmul_mma_h100.md). This version (the order above,
__launch_bounds__(256, 2), 32-bit epilogue) is slower than WMMA too: 15.9 ms against 14.7 in the same loan. Hence
the rule entry `matmul-mma` is in no preset; prefill's linears in preset `fused` are linear_wgmma.py's (Hopper's
wgmma, 8.6 ms).
"""

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T

from ._dtypes import ACC, seq_len_var
from ._mma import mma, pack
from .gelu import gelu_expr

EPILOGUES = ("bias", "gelu", "residual")
LANES = 32


def make_linear_mma(in_features: int, out_features: int, epilogue: str = "bias", seq_len: int | None = None,
                    tile=(128, 128), warps=(2, 4), k_step: int = 32, stages: int = 4, min_blocks: int = 2):
    """The kernel in this module's docstring (float16 only: mma.sync's f16 inputs, f32 accumulators).
    tile: (BM, BN); warps: (WM, WN); k_step: BK; stages: K-steps in shared memory at once; min_blocks: blocks an SM
    that ptxas must leave registers for (__launch_bounds__'s second argument)."""
    (BM, BN), (WM, WN), BK, S = tile, warps, k_step, stages
    if epilogue not in EPILOGUES:
        raise RuleError(f"linear on mma.sync: epilogue is one of {EPILOGUES} (got {epilogue!r})")
    TM, TN = BM // WM, BN // WN
    if BM % (WM * 16) or BN % (WN * 16) or BK % 32 or in_features % BK or stages < 2:
        raise RuleError(f"linear on mma.sync: each warp's share of the tile must be whole 16 x 16 tiles, K "
                        f"({in_features}) whole K-steps of a multiple of 32 and stages >= 2 (tile {tile}, warps "
                        f"{warps}, k_step {BK}, stages {stages})")
    K, N = T.int64(in_features), T.int64(out_features)
    n = seq_len_var(seq_len)                     # new tokens: symbolic, or fixed (tests)
    NTH = WM * WN * LANES
    LD = BK + 8                                  # a row of a tile in shared memory, in halves
    CH = BK // 8                                 # 16-byte chunks in a row of a tile
    MT, NT = TM // 16, TN // 8                   # a warp's accumulator tiles: MT x NT of 16 x 8
    A_COPIES, B_COPIES = BM * CH // NTH, BN * CH // NTH
    if BM * CH % NTH or BN * CH % NTH:
        raise RuleError(f"linear on mma.sync: the {NTH} threads must share a tile's {BM * CH} and {BN * CH} "
                        "16-byte copies evenly")
    KT, KK = in_features // BK, BK // 16          # K-steps; 16s of K a step (even: fragment buffer kk % 2)
    STAGE = (BM + BN) * LD                       # halves a stage: x's tile, then W's

    # index arithmetic, inlined where it is used
    def tid(w, tx):
        return w * LANES + tx

    def row(by, w, mt, tx, half):                # this lane's row g (half 0) or g + 8 (half 1) in tile mt, absolute
        return T.Cast("int64", by * BM + w // WN * TM + mt * 16 + tx // 4 + half * 8)

    def col(bx, w, nt, tx, e):                   # ... its column 2t + e in column tile nt
        return T.Cast("int64", bx * BN + w % WN * TN + nt * 8 + tx % 4 * 2 + e)

    @T.macro                                     # hygienic: the constants above resolve here
    def load_stage(smem, x, w_, kt, bx, by, w, tx):
        """K-step kt of x's rows and W's rows -> stage kt % S: 16 bytes a cp.async."""
        for it in T.unroll(A_COPIES):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(smem[kt % S * STAGE + (it * NTH + tid(w, tx)) // CH * LD + (it * NTH + tid(w, tx)) % CH * 8]),
                T.address_of(x[T.min(T.Cast("int64", by * BM + (it * NTH + tid(w, tx)) // CH), n - 1),
                               T.Cast("int64", kt * BK + (it * NTH + tid(w, tx)) % CH * 8)]), 16)
        for it in T.unroll(B_COPIES):
            T.ptx.cp.async_.cg.shared.global_(
                T.address_of(smem[kt % S * STAGE + (BM + (it * NTH + tid(w, tx)) // CH) * LD
                                  + (it * NTH + tid(w, tx)) % CH * 8]),
                T.address_of(w_[T.min(T.Cast("int64", bx * BN + (it * NTH + tid(w, tx)) // CH), N - 1),
                                T.Cast("int64", kt * BK + (it * NTH + tid(w, tx)) % CH * 8)]), 16)

    @T.macro
    def load_frags(af, bf, smem, stage, kk, fb, w, tx):
        """Fragments of 16 of K (kk) of a stage -> buffer fb of af, bf."""
        for mt in T.unroll(MT):                                         # rows 0-7 / 8-15 x k 0-7, then k 8-15
            T.ptx.ldmatrix.sync.aligned.m8n8.x4.shared.b16(
                af[(fb * MT + mt) * 4], af[(fb * MT + mt) * 4 + 1], af[(fb * MT + mt) * 4 + 2],
                af[(fb * MT + mt) * 4 + 3],
                T.address_of(smem[stage * STAGE + (w // WN * TM + mt * 16 + tx % 16) * LD + kk * 16 + tx // 16 * 8]))
        for np_ in T.unroll(NT // 2):                                   # W's rows 16np.. (two column tiles) x k
            T.ptx.ldmatrix.sync.aligned.m8n8.x4.shared.b16(            # 0-7 / 8-15: b0, b1 of tile 2np, then
                bf[(fb * NT // 2 + np_) * 4], bf[(fb * NT // 2 + np_) * 4 + 1],            # of 2np + 1
                bf[(fb * NT // 2 + np_) * 4 + 2], bf[(fb * NT // 2 + np_) * 4 + 3],
                T.address_of(smem[stage * STAGE + (BM + w % WN * TN + np_ * 16 + tx // 16 * 8 + tx % 8) * LD
                                  + kk * 16 + tx // 8 % 2 * 8]))

    @T.macro
    def mmas(acc, af, bf, fb):
        """acc += the products of fragment buffer fb: MT x NT mma.m16n8k16."""
        for mt in T.unroll(MT):
            for nt in T.unroll(NT):
                mma(acc, (mt * NT + nt) * 4, af, (fb * MT + mt) * 4, bf[(fb * NT + nt) * 2], bf[(fb * NT + nt) * 2 + 1])

    @T.macro
    def mainloop(acc, smem, af, bf, x, w_, bx, by, w, tx):
        """acc = the warp's TM x TN of x W^T, in MT x NT accumulators of 4 floats. CUTLASS's multistage order:
        the fragments of the next 16 of K are loaded (buffer (kk + 1) % 2) while the products of these run, and
        the wait for the next K-step's copies comes before the last 16 of this one, whose products then overlap
        the first ldmatrix of the next."""
        for i in T.unroll(MT * NT * 4):
            acc[i] = T.float32(0)
        for s in T.unroll(S - 1):                                       # the first S - 1 K-steps in flight
            if s < KT:
                load_stage(smem, x, w_, s, bx, by, w, tx)
            T.ptx.cp.async_.commit_group()
        T.ptx.cp.async_.wait_group(S - 2)                               # step 0's copies landed (everyone's)
        T.tvm_storage_sync("shared")
        load_frags(af, bf, smem, 0, 0, 0, w, tx)
        for kt in T.serial(KT):
            for kk in T.unroll(KK):
                if kk == 0:                                             # step kt + S - 1 into the stage step
                    if kt + S - 1 < KT:                                 # kt - 1 used (read before the last barrier)
                        load_stage(smem, x, w_, kt + S - 1, bx, by, w, tx)
                    T.ptx.cp.async_.commit_group()
                if kk == KK - 1:                                        # step kt + 1's copies landed, everyone's;
                    T.ptx.cp.async_.wait_group(S - 2)                   # this step's last fragments are in
                    T.tvm_storage_sync("shared")                        # registers already
                    if kt + 1 < KT:
                        load_frags(af, bf, smem, (kt + 1) % S, 0, (kk + 1) % 2, w, tx)
                else:
                    load_frags(af, bf, smem, kt % S, kk + 1, (kk + 1) % 2, w, tx)
                mmas(acc, af, bf, kk % 2)

    store = make_store(epilogue, n, N, MT, NT, row, col)

    @T.macro
    def body(x, w_, b32, r32, y):
        bx = T.launch_thread("blockIdx.x", (N + BN - 1) // BN)
        by = T.launch_thread("blockIdx.y", (n + BM - 1) // BM)
        tx = T.launch_thread("threadIdx.x", LANES)
        w = T.launch_thread("threadIdx.y", WM * WN)
        smem = T.alloc_buffer((S * STAGE,), "float16", scope="shared.dyn")
        af = T.alloc_buffer((2 * MT * 4,), "uint32", scope="local")  # A fragments of 16 of K, two buffers
        bf = T.alloc_buffer((2 * NT * 2,), "uint32", scope="local")  # B fragments of 16 of K, two buffers
        acc = T.alloc_buffer((MT * NT * 4,), ACC, scope="local")     # the warp's TM x TN of C
        T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", min_blocks)   # __launch_bounds__(NTH, min_blocks)
        mainloop(acc, smem, af, bf, x, w_, bx, by, w, tx)
        store(y, acc, b32, r32, bx, by, w, tx)

    return linear_prim_func(body, epilogue, n, N, K)


def make_store(epilogue: str, n, N, MT: int, NT: int, row, col):
    """The epilogue of a warp holding MT x NT accumulators of 16 x 8 in mma.m16n8k16's layout (this module's and
    linear_wgmma.py's kernels): acc[(mt * NT + nt) * 4 + half * 2 + e] is row row(by, w, mt, tx, half), column
    col(bx, w, nt, tx, e) of y. The bias (and the residual, GELU) added in registers, then two halves a store."""

    def unpack(v, e):                            # half e of a register holding two fp16
        return T.reinterpret("float16", T.Cast("uint16", T.shift_right(v, T.uint32(16 * e)) & T.uint32(0xFFFF)))

    # the epilogue reads b (and r) as pairs of halves too: b32, r32 (b's and r's memory seen as uint32)
    def value(acc, b32, mt, nt, half, e, bx, w, tx):                  # acc + bias, float32
        return acc[(mt * NT + nt) * 4 + half * 2 + e] + T.Cast(ACC, unpack(b32[col(bx, w, nt, tx, 0) // 2], e))

    def out(acc, b32, r32, mt, nt, half, e, bx, by, w, tx):            # the epilogue of one element, fp16
        if epilogue == "gelu":                  # GELU of the float32 sum, as make_linear_gelu
            return T.Cast("float16", gelu_expr(value(acc, b32, mt, nt, half, e, bx, w, tx)))
        y = T.Cast("float16", value(acc, b32, mt, nt, half, e, bx, w, tx))
        if epilogue == "residual":              # the sublayer's output rounded before the add, as make_linear_residual
            return unpack(r32[row(by, w, mt, tx, half) * (N // 2) + col(bx, w, nt, tx, 0) // 2], e) + y
        return y

    @T.macro
    def store(y, acc, b32, r32, bx, by, w, tx):
        """y's rows < n, columns < N (the lane's two columns 2t, 2t + 1: both in or both out, N being even), as one
        32-bit store of the two halves (y32: y's memory seen as pairs), not two 16-bit ones."""
        y32 = T.decl_buffer((n * (N // 2),), "uint32", data=y.data)
        for mt in T.unroll(MT):
            for nt in T.unroll(NT):
                for half in T.unroll(2):
                    if row(by, w, mt, tx, half) < n and col(bx, w, nt, tx, 0) < N:
                        y32[row(by, w, mt, tx, half) * (N // 2) + col(bx, w, nt, tx, 0) // 2] = pack(
                            out(acc, b32, r32, mt, nt, half, 0, bx, by, w, tx),
                            out(acc, b32, r32, mt, nt, half, 1, bx, by, w, tx))

    return store


def linear_prim_func(body, epilogue: str, n, N, K, name: str = "linear_mma"):
    """linear.py's signature around body(x, W, b32, r32, y) (b, r seen as pairs of halves; r only for "residual"),
    as the PrimFunc `name`."""
    ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}
    if epilogue == "residual":
        @T.prim_func
        def linear_mma(x_h: T.handle, w_: T.Buffer((N, K), "float16"), b: T.Buffer((N,), "float16"), r_h: T.handle,
                       y_h: T.handle):
            T.func_attr(ATTRS)
            x = T.match_buffer(x_h, (n, K), "float16")           # [n, K]
            r = T.match_buffer(r_h, (n, N), "float16")           # [n, N]
            y = T.match_buffer(y_h, (n, N), "float16")           # [n, N]
            body(x, w_, T.decl_buffer((N // 2,), "uint32", data=b.data),
                 T.decl_buffer((n * (N // 2),), "uint32", data=r.data), y)
    else:
        @T.prim_func
        def linear_mma(x_h: T.handle, w_: T.Buffer((N, K), "float16"), b: T.Buffer((N,), "float16"),
                       y_h: T.handle):
            T.func_attr(ATTRS)
            x = T.match_buffer(x_h, (n, K), "float16")           # [n, K]
            y = T.match_buffer(y_h, (n, N), "float16")           # [n, N]
            body(x, w_, T.decl_buffer((N // 2,), "uint32", data=b.data), None, y)
    return linear_mma.with_attr("global_symbol", name)
