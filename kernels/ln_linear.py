"""Decode's linears as hand-scheduled GPU matrix-vector products, with the layernorm before them or the
residual add after them folded in (one token):

    ln_linear       y[0, j] = Cast(dtype, sum_k h[k] * W[j, k] + b[j])                    (ln_1 + c_attn)
                    y[0, j] = Cast(dtype, gelu(sum_k h[k] * W[j, k] + b[j]))              (ln_2 + c_fc)
        with h[k] = Cast(dtype, (x[0, k] - mu) * rsqrt(var + eps) * gamma[k] + beta[k])  (layernorm.py, rounded)
             mu = 1/C * sum_k x[0, k],  var = 1/C * sum_k (x[0, k] - mu)^2          (two passes, float32)
    linear_residual y[0, j] = r[0, j] + Cast(dtype, sum_k x[0, k] * W[j, k] + b[j])       (c_proj + residual)

    x [1, K], gamma [K], beta [K], W [N, K], b [N], r [1, N] -> y [1, N]    accumulated in float32

In decode every linear is a stream of its weights (2-4 bytes of W per multiply-add), so what it costs is
how close it runs to the memory's bandwidth: at batch 1 a step of gpt2-xl reads 3.1 GB of weights. The
layernorm fused in front saves a launch and a round trip of its [1, C] output through memory.

Written already scheduled (thread bindings, registers), like attention.py's make_decode_attention: no
DLight rule matches "a layernorm feeding a matrix-vector product", so the rule list leaves these alone
(`tirx.is_scheduled`). The residual variant serves the MLP's c_proj (rows 4C long: gpt2-xl 8.4 -> 7.1 us
a call on an H200, against DLight's GEMV); for the attention's (C x C) DLight's GEMV was faster on
gpt2-xl (3.3 against 4.1 us: 200 blocks of 256 threads on 132 SMs), so the model leaves that one to it.

The work is split by output rows. A row j is owned by TX threads (threadIdx.x: one warp, or 2-8 warps
for a long row), a block by TY = 256 / TX rows (threadIdx.y). In order:

  1. w_load     each thread loads its whole slice of its row of W into registers: VEC contiguous elements
                (16 bytes: 8 halves / 4 floats, one vector load) at k = (ko * TX + tx) * VEC, for each ko.
                TX is the fewest lanes that need at most KO_MAX loads each, so that every load can be in
                flight at once: the bytes in flight, not the arithmetic, keep HBM busy (Little's law:
                ~4 TB/s x ~1 us of latency = ~4 MB over the chip). A warp reads 512 contiguous bytes a load.
                (In ln_linear, LLVM issues them after the layernorm's statistics: see "not kept" below.)
  2. layernorm  (ln_linear) the statistics of x, reduced over the whole block (warp shuffles + shared
                memory), then h = layernorm(x) into shared memory, once per block; (linear_residual) the
                thread's slice of x into registers, as W's.
  3. dot        each thread: its VEC-slices of h (a vector load from shared memory) or x times its
                registers of W, summed in float32.
  4. row_sum    the TX partial sums of a row added up (warp shuffles; through shared memory across
                warps when TX > 32), then the epilogue adds the bias (and GELU, or the residual), casts,
                and thread 0 of the row stores y.

Measured on an H200 (in the CUDA graph, gpt2-xl fp16; docs/results/README.md), and not kept:
  - the layernorm per warp, in registers, with no barrier at all (LLVM sinks the read-only W loads
    below the layernorm's barriers, so a block's weights only start coming once its layernorm is done):
    then every row normalizes x anew, 112 extra scalar loads of gamma/beta a thread, and c_fc took 16.7
    us instead of 8.9.
  - a cp.async.bulk.prefetch.L2 of each row first (sm_90), to have the weights coming during the
    layernorm: qkv 7.4 -> 9.1 us; and the same from decode_attention for the next two linears' weights,
    while the attention waits on latencies: 4.6 -> 7.6 us a call, the linears barely faster.
  - W's loads issued before the layernorm's barriers (a `prefetch.global.L2` of one line per row, an
    asm statement taking W's address, stops LLVM sinking them; SASS confirmed the order): slower too,
    gpt2's qkv 3.2 -> 3.6 us, gpt2-xl's c_fc 8.9 -> 9.6 us. The loads as LLVM places them, after the
    statistics, are what is kept.
  - (2026-12-03) x, gamma and beta in registers, gamma and beta loaded with W, the statistics per thread
    then across the block: the compiler still sank the loads, and gpt2-xl's qkv took 355 -> 390 us a step.
  - (2026-12-03, with PDL) the statistics per row's warp (x's slices in registers beside W's, warp
    shuffles, gamma and beta loaded in the dot product; no shared memory, no barrier): 80-103 registers
    a thread against 32, so 2-3 blocks an SM instead of 8 and the 600-800 blocks in 2-4 waves; gpt2-xl's
    step 1631 -> 1828-2533 us (docs/results/trace_decode_h200_warp_layernorm_registers.md). At 32
    registers every block is resident at once, all of W's loads in flight from the start.
  - (2026-12-03, with PDL) W copied into shared memory by cp.async before the wait (29 KB a block, 7-8
    blocks an SM, no registers held): every linear ~0.6 us slower a call, gpt2-xl's step 1607.0 -> 1693.2
    us (docs/results/trace_decode_h200_weights_cp_async.md).
With `pdl` (kernels/_pdl.py) the CUDA C issues W's loads before the `griddepcontrol.wait`, but ptxas
(nvcc 13.0) does not keep them there: their results need registers only in the dot product, and in SASS
the wait (ACQBULK) comes first and the LDGs after the statistics, as without PDL. (An earlier note here
said the opposite; cuobjdump of the kernels as built now shows this order.)
x is read with read-only loads (ld.global.nc), which ptxas may schedule across the wait (_pdl.py's
read_coherently): in ln_linear the SASS has them all after it, for every Hub size and dtype, and a test
checks that (tests/test_cuda_compile.py). Coherent loads of x cost 2-6% of a decode step here: the three
passes over x then each reload it after a barrier (H200, in the CUDA graph: gpt2 244.5 -> 260.2 us a
step, gpt2-xl 1611.5 -> 1641.1; staged once in shared memory instead, 253.1 and 1675.6). linear_residual,
which reads x and the residual once, takes them coherently (no cost measured).

Rows past N (the last block, when TY does not divide N) read row N - 1 again and store nothing; k past K
(when TX * VEC does not divide K) is masked per vector.
"""

from tinygpt2.tvm_shim import T

from ._dtypes import ACC, check_dtype
from ._pdl import flags as pdl_flags, grid_wait, launch_next, read_coherently
from .gelu import gelu_expr
from .layernorm import layernorm_ref
from .linear import linear_gelu_ref, linear_ref, linear_residual_ref

WARP = 32                   # CUDA's warp: the fewest lanes a row gets (ln_linear: always one warp)
THREADS = 256               # per block (WebGPU's limit per workgroup)
KO_MAX = 8                  # at most this many vector loads of W per thread and row, when TX can grow instead
VECTOR_BYTES = 16           # the widest load a CUDA thread issues (LDG.128)
WEBGPU_MAX_LANES = 4        # WGSL has vec2..vec4 only: TVM's WebGPU codegen rejects wider vectors
ITEMSIZE = {"float32": 4, "float16": 2}
UNROLL = {"pragma_auto_unroll_max_step": 256, "pragma_unroll_explicit": 1}


def vector_width(n_embd: int, dtype: str, max_lanes: int = 8) -> int:
    """Elements per vector load of W and x: 16 bytes' worth (8 halves / 4 floats, at most max_lanes), halved
    until it divides K, so that every vector lies inside a row (and is aligned: rows start at multiples of
    K elements)."""
    vec = min(VECTOR_BYTES // ITEMSIZE[dtype], max_lanes)
    while n_embd % vec:
        vec //= 2
    return vec


def lanes_per_row(n_vec: int) -> int:
    """TX: one warp, doubled (up to the whole block) while a thread would need more than KO_MAX loads."""
    tx = WARP
    while tx < THREADS and -(-n_vec // tx) > KO_MAX:
        tx *= 2
    return tx


def _geometry(in_features: int, out_features: int, dtype: str, max_lanes: int, tx: int | None = None):
    check_dtype(dtype)
    vec = vector_width(in_features, dtype, max_lanes)
    n_vec = in_features // vec                                # vectors per row of W
    tx = tx or lanes_per_row(n_vec)
    ty = THREADS // tx                                        # rows per block
    return dict(vec=vec, n_vec=n_vec, tx=tx, ty=ty, blocks=-(-out_features // ty),
                ko=-(-n_vec // tx))                           # vector loads per thread


@T.macro(hygienic=False)
def _load_w(w, w_reg, bx, NB, TX, TY, KO, V, CV, N):
    """1. W's slice of the thread into registers (rows past N: row N - 1), 16-byte vectors."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for ko in T.serial(KO, annotations=UNROLL):
                for v in T.vectorized(V):
                    with T.sblock("w_load"):
                        vj = T.axis.spatial(NB * TY, bx * TY + ty)
                        vt, vo, vv = T.axis.remap("SSS", [tx, ko, v])
                        T.where(ko * TX + tx < CV)
                        w_reg[vj, vt, vo, vv] = w[T.min(vj, N - T.int64(1)), (vo * TX + vt) * V + vv]


@T.macro(hygienic=False)
def _row_sum(partial, row_acc, bx, NB, TX, TY):
    """4. a row's TX partial sums added across its threads (spatial loops outside, lanes innermost: what
    TVM's cross-thread reduction lowering needs); the epilogue then stores from thread 0 of the row."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("row_sum"):
                vj = T.axis.spatial(NB * TY, bx * TY + ty)
                vt = T.axis.reduce(TX, tx)
                with T.init():
                    row_acc[vj] = T.float32(0)
                row_acc[vj] = row_acc[vj] + partial[vj, vt]


def make_ln_linear_decode(n_embd: int, out_features: int, dtype: str = "float32", eps: float = 1e-5,
                          gelu: bool = False, max_lanes: int = 8, pdl: str | None = None):
    """ln + linear (+ GELU) for one token: see the module docstring. Grid ceil(N / 8), 256 threads.

    max_lanes caps the vector width: pass WEBGPU_MAX_LANES (4) for the webgpu target, whose float16 loads
    are then 8 bytes; CUDA, Metal and ROCm take the default (16-byte loads in both dtypes).
    pdl: CUDA sm_90+ only, one of kernels/_pdl.py's MODES: launched with programmatic dependent launch,
    W's loads written before the kernel waits for the previous one (ptxas moves them after: see above), x read
    after."""
    g = _geometry(n_embd, out_features, dtype, max_lanes, tx=WARP)     # one warp a row
    C, N = T.int64(n_embd), T.int64(out_features)
    one = T.int64(1)
    TX, TY, NB = T.int64(g["tx"]), T.int64(g["ty"]), T.int64(g["blocks"])
    V, CV, KO = T.int64(g["vec"]), T.int64(g["n_vec"]), T.int64(g["ko"])
    NP = NB * TY                                              # rows, padded to whole blocks
    NT = TX * TY                                              # threads per block
    KX = T.int64(-(-n_embd // THREADS))                       # elements of x per thread in the statistics
    inv_c = T.float32(1.0 / n_embd)
    eps_ = T.float32(eps)

    def epilogue(acc):
        return gelu_expr(acc) if gelu else acc

    pdl_wait, pdl_early, pdl_loaded = pdl_flags(pdl)

    @T.prim_func(s_tir=True)
    def ln_linear_decode(x: T.Buffer((one, C), dtype), gamma: T.Buffer((C,), dtype), beta: T.Buffer((C,), dtype),
                         w: T.Buffer((N, C), dtype), b: T.Buffer((N,), dtype), y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        # registers: indexed by (row, lane, ...) so that TVM compacts each to what one thread touches
        w_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")      # per thread: KO x V
        partial = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        row_acc = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        x_sum = T.sblock_alloc_buffer((one,), ACC, scope="shared")
        sq_sum = T.sblock_alloc_buffer((one,), ACC, scope="shared")
        h = T.sblock_alloc_buffer((C,), dtype, scope="shared")                    # layernorm(x), in dtype
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            _load_w(w, w_reg, bx, NB, TX, TY, KO, V, CV, N)
            if pdl_wait:
                grid_wait(TY, TX, pdl_early)
            # 2. the statistics of x: block-wide reductions, as layernorm.py's (two passes)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("x_sum"):
                            vk = T.axis.reduce(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            with T.init():
                                x_sum[0] = T.float32(0)
                            x_sum[0] = x_sum[0] + T.Cast(ACC, x[0, vk])
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("sq_sum"):
                            vk = T.axis.reduce(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            with T.init():
                                sq_sum[0] = T.float32(0)
                            sq_sum[0] = sq_sum[0] + (T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c) * (
                                T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c)
            # h = layernorm(x), rounded to dtype as make_layernorm's output is, into shared memory: once
            # per block (normalizing per row, in registers, made gpt2-xl's c_fc 1.8x slower)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for kx in T.serial(KX):
                        with T.sblock("normalize"):
                            vk = T.axis.spatial(C, kx * NT + ty * TX + tx)
                            T.where(kx * NT + ty * TX + tx < C)
                            h[vk] = T.Cast(dtype, (T.Cast(ACC, x[0, vk]) - x_sum[0] * inv_c)
                                           * T.rsqrt(sq_sum[0] * inv_c + eps_)
                                           * T.Cast(ACC, gamma[vk]) + T.Cast(ACC, beta[vk]))
            # 3. per thread: sum over its k slices of h[k] * W[j, k] (h: a vector load from shared memory)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("dot"):
                        vj = T.axis.spatial(NP, bx * TY + ty)
                        vt = T.axis.spatial(TX, tx)
                        h_vec = T.sblock_alloc_buffer((V,), dtype, scope="local")
                        partial[vj, vt] = T.float32(0)
                        for ko in T.serial(KO, annotations=UNROLL):
                            if ko * TX + vt < CV:
                                for v in T.vectorized(V):
                                    h_vec[v] = h[(ko * TX + vt) * V + v]
                                for v in T.serial(V, annotations=UNROLL):
                                    partial[vj, vt] = partial[vj, vt] + T.Cast(ACC, h_vec[v]) * T.Cast(
                                        ACC, w_reg[vj, vt, ko, v])
            if pdl_loaded:
                launch_next(TY, TX)
            _row_sum(partial, row_acc, bx, NB, TX, TY)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("epilogue"):
                        vj = T.axis.spatial(N, bx * TY + ty)
                        T.where(tx == T.int64(0) and bx * TY + ty < N)
                        y[0, vj] = T.Cast(dtype, epilogue(row_acc[vj] + T.Cast(ACC, b[vj])))

    return ln_linear_decode


def make_linear_residual_decode(in_features: int, out_features: int, dtype: str = "float32", max_lanes: int = 8,
                                pdl: str | None = None):
    """c_proj + the residual add for one token, y = r + (x @ W.T + b): see the module docstring (no
    layernorm; a long row, gpt2's 3072 or gpt2-xl's 6400, gets 2-8 warps). Grid ceil(N / TY), 256 threads.
    pdl: as make_ln_linear_decode's."""
    g = _geometry(in_features, out_features, dtype, max_lanes)
    K, N = T.int64(in_features), T.int64(out_features)
    one = T.int64(1)
    TX, TY, NB = T.int64(g["tx"]), T.int64(g["ty"]), T.int64(g["blocks"])
    V, CV, KO = T.int64(g["vec"]), T.int64(g["n_vec"]), T.int64(g["ko"])
    NP = NB * TY

    pdl_wait, pdl_early, pdl_loaded = pdl_flags(pdl)

    @T.prim_func(s_tir=True)
    def linear_residual_decode(x: T.Buffer((one, K), dtype), w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype),
                               r: T.Buffer((one, N), dtype), y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        w_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")      # per thread: KO x V
        x_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")
        partial = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        row_acc = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            _load_w(w, w_reg, bx, NB, TX, TY, KO, V, CV, N)
            if pdl_wait:
                read_coherently(TY, TX, T.address_of(x[0, 0]))
                read_coherently(TY, TX, T.address_of(r[0, 0]))
                grid_wait(TY, TX, pdl_early)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    for ko in T.serial(KO, annotations=UNROLL):
                        for v in T.vectorized(V):
                            with T.sblock("x_load"):            # x's slice of the thread, as W's
                                vj = T.axis.spatial(NP, bx * TY + ty)
                                vt, vo, vv = T.axis.remap("SSS", [tx, ko, v])
                                T.where(ko * TX + tx < CV)
                                x_reg[vj, vt, vo, vv] = x[0, (vo * TX + vt) * V + vv]
            # 3. x times W, in float32
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("dot"):
                        vj = T.axis.spatial(NP, bx * TY + ty)
                        vt = T.axis.spatial(TX, tx)
                        partial[vj, vt] = T.float32(0)
                        for ko in T.serial(KO, annotations=UNROLL):
                            if ko * TX + vt < CV:
                                for v in T.serial(V, annotations=UNROLL):
                                    partial[vj, vt] = partial[vj, vt] + T.Cast(ACC, x_reg[vj, vt, ko, v]) * T.Cast(
                                        ACC, w_reg[vj, vt, ko, v])
            if pdl_loaded:
                launch_next(TY, TX)
            _row_sum(partial, row_acc, bx, NB, TX, TY)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("epilogue"):
                        vj = T.axis.spatial(N, bx * TY + ty)
                        T.where(tx == T.int64(0) and bx * TY + ty < N)
                        # the sublayer's output is rounded to dtype before the add, as in make_linear_residual
                        y[0, vj] = r[0, vj] + T.Cast(dtype, row_acc[vj] + T.Cast(ACC, b[vj]))

    return linear_residual_decode


def ln_linear_ref(x, gamma, beta, w, b, eps=1e-5, gelu=False):
    """The two unfused kernels' references in sequence: layernorm (rounded to x's dtype), then linear."""
    h = layernorm_ref(x, gamma, beta, eps)
    return linear_gelu_ref(h, w, b) if gelu else linear_ref(h, w, b)


linear_residual_decode_ref = linear_residual_ref   # the same math as prefill's (linear.py)
