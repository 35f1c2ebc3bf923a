"""Decode's linears as hand-scheduled GPU matrix-vector products, with the layernorm before them or the
residual add after them folded in (one token):

    ln_linear       y[0, j] = Cast(dtype, rstd * (sum_k W'[j, k] * x[0, k] - mu * s[j]) + b'[j])   (ln_1 + c_attn)
                    y[0, j] = Cast(dtype, gelu(...the same...))                                  (ln_2 + c_fc)
        with mu = 1/C * sum_k x[0, k],  rstd = rsqrt(1/C * sum_k x[0, k]^2 - mu^2 + eps)      (float32)
        and the layernorm's affine folded into the linear (fold_layernorm, once, when the weights load):
             W'[j, k] = W[j, k] * gamma[k],  b'[j] = b[j] + sum_k W[j, k] * beta[k],  s[j] = sum_k W'[j, k]
        which is W @ ((x - mu) * rstd * gamma + beta) + b, layernorm then linear, rearranged
    linear_residual y[0, j] = r[0, j] + Cast(dtype, sum_k x[0, k] * W[j, k] + b[j])       (c_proj + residual)

    x [1, K], W [N, K], b [N], s [N] (float32), r [1, N] -> y [1, N]    accumulated in float32

In decode every linear is a stream of its weights (2-4 bytes of W per multiply-add), so what it costs is
how close it runs to the memory's bandwidth: at batch 1 a step of gpt2-xl reads 3.1 GB of weights. The
layernorm fused in front saves a launch and a round trip of its [1, C] output through memory; folded into
the weights, its statistics no longer stand between the kernel's start and its dot product: mu and rstd
are summed in the same loop as W' @ x and enter only in the epilogue (see "the layernorm, folded" below).

Written already scheduled (thread bindings, registers), like attention.py's make_decode_attention: no
DLight rule matches "a layernorm feeding a matrix-vector product", so the rule list leaves these alone
(`tirx.is_scheduled`). The residual variant serves the MLP's c_proj (rows 4C long: gpt2-xl 8.4 -> 7.1 us
a call on an H200, against DLight's GEMV); the attention's (C x C) too when the step is launched with
PDL: then its weights can come in during the attention (prefetch_w below; model.py). Launched after the
attention instead, DLight's GEMV was faster on gpt2-xl (3.3 against 4.1 us: 200 blocks on 132 SMs).

The work is split by output rows. A row j is owned by TX threads (threadIdx.x: one warp, or 2-8 warps
for a long row), a block by TY = 256 / TX rows (threadIdx.y). In order:

  1. w_load     each thread loads its whole slice of its row of W into registers: VEC contiguous elements
                (16 bytes: 8 halves / 4 floats, one vector load) at k = (ko * TX + tx) * VEC, for each ko.
                TX is the fewest lanes that need at most KO_MAX loads each, so that every load can be in
                flight at once: the bytes in flight, not the arithmetic, keep HBM busy (Little's law:
                ~4 TB/s x ~1 us of latency = ~4 MB over the chip). A warp reads 512 contiguous bytes a load.
  2. x_load     the thread's slice of x into registers, as W's (ln_linear: one warp a row, so each warp
                holds the whole of x).
  3. dot        each thread: its slices of x times its registers of W, summed in float32; ln_linear sums
                x and x^2 in the same loop.
  4. row_sum    the TX partial sums of a row added up (warp shuffles; through shared memory across
                warps when TX > 32), then the epilogue (ln_linear: mu, rstd from the row's own sums of x,
                no barrier) adds the bias (and GELU, or the residual), casts, and thread 0 of the row
                stores y. A kernel of 32 registers a thread in float16 (34-36 in float32): 8 blocks of 256
                an SM, every block of gpt2-xl's 600-800 resident at once (tests/test_cuda_compile.py
                checks the 32).

The layernorm, folded (2026-12-03, sixth session; H200, in the CUDA graph, gpt2-xl fp16): the kernel
before it computed the layernorm in each block first (two block-wide reductions over x, then h =
layernorm(x) into shared memory, then the dot product with h: three barriers, and ptxas placed W's
loads after the statistics). Folded, gpt2-xl's qkv went 7.14 -> 5.92 us a call, c_fc 8.77 -> 7.10, the
step 1614.7 -> 1478.4 us; gpt2's step 242.5 -> 230.6 (docs/results/trace_decode_h200_folded_layernorm.md).
Folding only the mean and variance but loading gamma in the loop (gamma * x * W) needs 48 registers a
thread (5 blocks an SM): qkv 6.50 us, c_fc 9.18 (800 blocks in two waves); capped at 40 or 32 registers,
slower still (spills at 32). E[x^2] - mu^2 and W' @ x - mu * s in float32 lose digits
when |mu| is large against x's deviation: in a numpy model of this arithmetic (C = 1600, float32), 5e-7 of
the output's largest value for x ~ N(2, 3^2) or with one channel at 3000 (GPT-2's large activations are a
few such channels, which raise the variance), 6e-5 at a mean of 30 deviations, 4e-4 at 100. A per-warp
two-pass (mu by warp shuffles first, then W' @ (x - mu) and sum (x - mu)^2, no s) is exact to 8e-6 at a mean
of 100 deviations, but ptxas then issues all of W's loads ahead of the shuffles and holds them: 80 registers a
thread, 3 blocks an SM (SASS, nvcc 13.0; not run on the GPU).

Measured on an H200 with that earlier kernel (in the CUDA graph, gpt2-xl fp16; docs/results/README.md),
and not kept:
  - the layernorm per warp, in registers, with no barrier at all: every row normalized x anew, 112 extra
    scalar loads of gamma/beta a thread, and c_fc took 16.7 us instead of 8.9; with PDL, the statistics
    per row's warp, gamma and beta loaded in the dot product: 80-103 registers a thread, 2-3 blocks an SM,
    gpt2-xl's step 1631 -> 1828-2533 us (docs/results/trace_decode_h200_warp_layernorm_registers.md).
    (Folding gamma and beta into the weights is what removes those registers.)
  - a cp.async.bulk.prefetch.L2 of each row first (sm_90), to have the weights coming during the
    layernorm: qkv 7.4 -> 9.1 us; and the same from decode_attention for the next two linears' weights,
    while the attention waits on latencies: 4.6 -> 7.6 us a call, the linears barely faster.
  - W's loads issued before the layernorm's barriers (a `prefetch.global.L2` of one line per row, an
    asm statement taking W's address, stops LLVM sinking them; SASS confirmed the order): slower too,
    gpt2's qkv 3.2 -> 3.6 us, gpt2-xl's c_fc 8.9 -> 9.6 us.
  - x, gamma and beta in registers, gamma and beta loaded with W, the statistics per thread then across
    the block: the compiler still sank the loads, and gpt2-xl's qkv took 355 -> 390 us a step.
  - (with PDL) W copied into shared memory by cp.async before the wait (29 KB a block, 7-8 blocks an SM,
    no registers held): every linear ~0.6 us slower a call, gpt2-xl's step 1607.0 -> 1693.2 us
    (docs/results/trace_decode_h200_weights_cp_async.md).
  - (with PDL, the layernorm folded) a prefetch into L2 of the block's rows of W before the wait, one
    128-byte line a thread: ptxas then issues all of W's loads before the wait, but at 50-52 registers (5
    blocks an SM): qkv 5.92 -> 7.10 us a call, the step 1483.8 -> 1656.9 us. And ln_linear with 128-thread
    blocks (4 rows; 1200 / 1600 blocks): 1509.1 us (docs/results/trace_decode_h200_ln_linear_prefetch_t128.md).
    The same prefetch is what made decode attention faster (attention.py): there registers are not scarce.
  - (with PDL, the layernorm folded) c_fc letting the MLP's c_proj launch right after its loads (`early`), so
    that c_proj's blocks fill the SM slots c_fc leaves free: c_fc + c_proj 13.95 -> 14.76 us, the step 1407.5 ->
    1444.2 us (with c_proj's prefetch_w: 1493.2); two weight streams at once read HBM worse than one after the
    other (docs/results/trace_decode_h200_early_launch.md). Nor does a persistent kernel for the MLP pay, nor W
    in L2 ahead of time (scripts/bench_weight_stream.py: a step of one kernel per matrix that only read its bytes
    would reach 73% of the roofline; docs/results/bench_weight_stream_h200.md).
  - (with PDL) c_fc launched during the attention (the attention's c_proj letting it launch at once), its rows of
    W prefetched into L2 before the wait and loaded into registers only after it (32 registers kept): c_fc 7.14
    -> 6.34 us, but the attention slower by more, the step 1406.8 -> 1460.6 us; the prefetch alone 1485.1
    (same file, its last section).
With `pdl` (kernels/_pdl.py) the CUDA C issues W's loads before the `griddepcontrol.wait`, but ptxas
(nvcc 13.0) does not keep them there: their results need registers only in the dot product, and in SASS
at most the first LDG of W comes before the wait (ACQBULK), the rest after it, interleaved with the dot
product's arithmetic (gpt2-xl fp16, both kernels). Both kernels read their activations (x, the
residual) once, with coherent loads (_pdl.py's read_coherently), which stay after the wait: read-only
ones (ld.global.nc) may be moved across it by ptxas. (The earlier ln_linear read x in three passes, where
coherent loads cost 2-6% of a step, and kept read-only loads checked in SASS instead.)

Rows past N (the last block, when TY does not divide N) read row N - 1 again and store nothing; k past K
(when TX * VEC does not divide K) is masked per vector.
"""

import numpy as np

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import T, tirx

from ._dtypes import ACC, check_dtype
from ._pdl import flags as pdl_flags, grid_wait, launch_next, read_coherently
from .gelu import gelu_expr
from .layernorm import layernorm_ref
from .linear import linear_gelu_ref, linear_ref, linear_residual_ref

WARP = 32                   # CUDA's warp: the fewest lanes a row gets (ln_linear: always one warp)
THREADS = 256               # per block (WebGPU's limit per workgroup)
KO_MAX = 8                  # at most this many vector loads of W per thread and row, when TX can grow instead
VECTOR_BYTES = 16           # the widest load a CUDA thread issues (LDG.128)
CACHE_LINE = 128            # bytes: what a prefetch into L2 brings
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


def cache_lines(n: int, dtype: str) -> tuple[int, int]:
    """(elements of a 128-byte line, lines that n contiguous elements span): the L2 prefetches' unit."""
    line = CACHE_LINE // ITEMSIZE[dtype]
    return line, -(-n // line)


def _maybe_gelu(v, gelu: bool):
    """An ln + linear's epilogue: GELU of the float32 value (ln_2 + c_fc), or the value (ln_1 + c_attn)."""
    return gelu_expr(v) if gelu else v


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
def _prefetch_w(w, bx, TX, TY, N, LE, NL, NI):
    """0. (prefetch_w) the block's rows of W into L2, before the wait: each row's NL lines of LE elements
    shared among its TX threads, one prefetch a line (NI a thread at most)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for i in T.serial(NI):
                with T.sblock("w_prefetch"):
                    T.where(i * TX + tx < NL)
                    T.reads()
                    T.writes()
                    T.ptx.prefetch.global_.L2(T.address_of(w[T.min(bx * TY + ty, N - T.int64(1)), (i * TX + tx) * LE]))


@T.macro(hygienic=False)
def _load_x(x, x_reg, bx, NP, TX, TY, KO, V, CV):
    """2. x's slice of the thread into registers, as W's (every row of a block takes the same slices)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for ko in T.serial(KO, annotations=UNROLL):
                for v in T.vectorized(V):
                    with T.sblock("x_load"):
                        vj = T.axis.spatial(NP, bx * TY + ty)
                        vt, vo, vv = T.axis.remap("SSS", [tx, ko, v])
                        T.where(ko * TX + tx < CV)
                        x_reg[vj, vt, vo, vv] = x[0, (vo * TX + vt) * V + vv]


# preload (the one-wave kernels below): their epilogue's operands loaded early, into registers of each row's lane
# 0 -- the bias (and ln's s) written before the PDL wait, with W (they are weights; ptxas issues them right after
# the wait, with W's loads, SASS nvcc 13) and the residual right after it. Without (c_fc in preset `fused`) they are
# loaded after the lanes' shuffles, just before the store, so that every block ends by waiting out one memory
# latency on the step's critical path (decode_cluster gained 14.43 -> 13.86 us a layer from the same change). As
# timed on gpt2-xl (H100, docs/results/attention_proj_preload_h100.md): the attention's c_proj 2.02 -> 1.89 us a
# launch, c_fc 7.26 -> 8.53 (its b' and s held in registers through the whole dot product). model.py's
# PRELOAD_LINEARS picks the linears: in `fused`, the attention's c_proj.


@T.macro(hygienic=False)
def _preload(src, dst, bx, TY, TX, N, activation):
    """(preload) src's elements of the block's rows into dst, by each row's lane 0 (rows past N: none); src a
    vector [N], or with activation (a Python bool) a [1, N] activation."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("preload"):
                T.where(tx == T.int64(0) and bx * TY + ty < N)
                if activation:
                    dst[bx * TY + ty] = src[0, bx * TY + ty]
                else:
                    dst[bx * TY + ty] = src[bx * TY + ty]


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


# prefetch_next (make_ln_linear_decode, CUDA sm_90 with pdl): the kernel also brings the first part of the *next*
# linear's weights into L2 -- c_fc those of the MLP's c_proj, whose stream otherwise starts only once c_fc's blocks
# have left the SMs (c_fc holds all of its W in registers: c_proj's blocks find no room before), while HBM idles
# through c_fc's tail (its sums, epilogue and exit) and c_proj's start. One bulk prefetch a block
# (cp.async.bulk.prefetch.L2, as attention_cluster's of c_fc), issued by its first thread right after the PDL wait
# (NEXT_PREFETCH_AT "wait": its own W's loads are issued by then) or after its store ("end"), of NB equal slices of
# W_next's first 1/fraction, in memory order: the rows the pipelined c_proj loads first (its block b's first group
# is row b). The grid completes only once these bytes have landed, so the fraction trades c_fc's end against
# c_proj's bytes (model.py's FC_PREFETCH_PROJ picks it). As
# timed on gpt2-xl (H100): c_fc 7.36 -> 7.52 / 7.81 / 8.45 us a launch for 1/16, 1/8, 1/4, the MLP's c_proj 9.86 ->
# 9.63 / 9.60 / 9.50: c_proj gains less than c_fc loses -- off in `fused` (docs/results/trigger_prefetch_h100.md).
# With it, ptxas took 34 registers a thread (6 blocks of 256 an SM: c_fc's 800 blocks no longer in one wave);
# __launch_bounds__(256, 8) holds it to 32, no spills.


NEXT_PREFETCH_AT = "wait"     # where: "wait" (right after the PDL wait) or "end" (after the block's store)


@T.macro(hygienic=False)
def _next_prefetch(w_next, bx, TY, TX, PF_ELEMS, KN, pf_bytes):
    """(prefetch_next) block bx's slice of W_next's first part into L2: PF_ELEMS elements from bx * PF_ELEMS, in
    memory order, one bulk prefetch by the block's first thread."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("next_prefetch"):
                T.where(ty == T.int64(0) and tx == T.int64(0))
                T.reads()
                T.writes()
                T.ptx.cp.async_.bulk.prefetch.L2.global_(
                    T.address_of(w_next[bx * PF_ELEMS // KN, bx * PF_ELEMS % KN]), T.uint32(pf_bytes))


def _without_param(func, name: str):
    """func without its parameter `name` (one its body does not use): how a factory drops an optional input."""
    return tirx.PrimFunc([p for p in func.params if p.name != name], func.body, func.ret_type, func.attrs)


def make_ln_linear_decode(n_embd: int, out_features: int, dtype: str = "float32", eps: float = 1e-5,
                          gelu: bool = False, max_lanes: int = 8, pdl: str | None = None,
                          preload: bool = False, prefetch_next: tuple[int, int, int] | None = None):
    """ln + linear (+ GELU) for one token, the layernorm folded into the linear: see the module docstring.
    Grid ceil(N / 8), 256 threads: one warp a row, each warp covering the whole of x.

    Takes fold_layernorm's (W', b', s) in place of (gamma, beta, W, b): x [1, C], W' [N, C], b' [N],
    s [N] float32 -> y [1, N].
    max_lanes caps the vector width: pass WEBGPU_MAX_LANES (4) for the webgpu target, whose float16 loads
    are then 8 bytes; CUDA, Metal and ROCm take the default (16-byte loads in both dtypes).
    pdl: CUDA sm_90+ only, one of kernels/_pdl.py's MODES: launched with programmatic dependent launch,
    W's loads written before the kernel waits for the previous one (ptxas moves them after: see above), x read
    after, coherently. preload: b' and s loaded with W (above). prefetch_next (out, in, fraction): with pdl, one
    more input after s, W_next [out, in], whose first 1/fraction this kernel brings into L2 (above)."""
    g = _geometry(n_embd, out_features, dtype, max_lanes, tx=WARP)     # one warp a row
    C, N = T.int64(n_embd), T.int64(out_features)
    one = T.int64(1)
    TX, TY, NB = T.int64(g["tx"]), T.int64(g["ty"]), T.int64(g["blocks"])
    V, CV, KO = T.int64(g["vec"]), T.int64(g["n_vec"]), T.int64(g["ko"])
    NP = NB * TY
    inv_c = T.float32(1.0 / n_embd)
    eps_ = T.float32(eps)

    pdl_wait, pdl_early, pdl_loaded = pdl_flags(pdl)
    n_next, k_next, fraction = prefetch_next or (1, 1, 1)
    if prefetch_next is not None and not pdl_wait:
        raise RuleError("prefetch_next: CUDA with PDL only (cp.async.bulk.prefetch is sm_90's)")
    # each block's slice of W_next's first 1/fraction, in bytes: a multiple of 16, as the bulk prefetch needs
    pf_bytes = n_next * k_next * ITEMSIZE[dtype] // fraction // g["blocks"] // 16 * 16
    PF_ELEMS, KN = T.int64(pf_bytes // ITEMSIZE[dtype]), T.int64(k_next)
    pf_on = prefetch_next is not None and pf_bytes > 0

    @T.prim_func(s_tir=True)
    def ln_linear_decode(x: T.Buffer((one, C), dtype), w: T.Buffer((N, C), dtype), b: T.Buffer((N,), dtype),
                         w_sum: T.Buffer((N,), ACC), w_next: T.Buffer((T.int64(n_next), KN), dtype),
                         y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        w_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")      # per thread: KO x V
        x_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")
        partial = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        x_part = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        sq_part = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        row_acc = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        row_x = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        row_sq = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        b_reg = T.sblock_alloc_buffer((NP,), dtype, scope="local")             # (preload: b' and s)
        s_reg = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            if pf_on:       # __launch_bounds__(256, 8): ptxas held to 32 registers, 8 blocks an SM (one wave)
                T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 8)
            _load_w(w, w_reg, bx, NB, TX, TY, KO, V, CV, N)
            if preload:
                _preload(b, b_reg, bx, TY, TX, N, False)
                _preload(w_sum, s_reg, bx, TY, TX, N, False)
            if pdl_wait:
                read_coherently(TY, TX, T.address_of(x[0, 0]))
                grid_wait(TY, TX, pdl_early)
            if pf_on and NEXT_PREFETCH_AT == "wait":
                _next_prefetch(w_next, bx, TY, TX, PF_ELEMS, KN, pf_bytes)
            _load_x(x, x_reg, bx, NP, TX, TY, KO, V, CV)
            # 3. per thread, in one loop: the dot product, and x's sum and sum of squares. Every warp sums all of x
            # again (N times in all): arithmetic the loads hide, bought to need no barrier and no shared memory
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("dot"):
                        vj = T.axis.spatial(NP, bx * TY + ty)
                        vt = T.axis.spatial(TX, tx)
                        partial[vj, vt] = T.float32(0)
                        x_part[vj, vt] = T.float32(0)
                        sq_part[vj, vt] = T.float32(0)
                        for ko in T.serial(KO, annotations=UNROLL):
                            if ko * TX + vt < CV:
                                for v in T.serial(V, annotations=UNROLL):
                                    partial[vj, vt] = partial[vj, vt] + T.Cast(ACC, w_reg[vj, vt, ko, v]) * T.Cast(
                                        ACC, x_reg[vj, vt, ko, v])
                                    x_part[vj, vt] = x_part[vj, vt] + T.Cast(ACC, x_reg[vj, vt, ko, v])
                                    sq_part[vj, vt] = sq_part[vj, vt] + T.Cast(ACC, x_reg[vj, vt, ko, v]) * T.Cast(
                                        ACC, x_reg[vj, vt, ko, v])
            if pdl_loaded:
                launch_next(TY, TX)
            _row_sum(partial, row_acc, bx, NB, TX, TY)
            _row_sum(x_part, row_x, bx, NB, TX, TY)
            _row_sum(sq_part, row_sq, bx, NB, TX, TY)
            for ty in T.thread_binding(TY, thread="threadIdx.y"):
                for tx in T.thread_binding(TX, thread="threadIdx.x"):
                    with T.sblock("epilogue"):
                        vj = T.axis.spatial(N, bx * TY + ty)
                        T.where(tx == T.int64(0) and bx * TY + ty < N)
                        # mu = row_x / C, var = row_sq / C - mu^2: rstd * (W' @ x - mu * s) + b'
                        # (preload: s and b' from the registers _preload filled; the choice is made while parsing)
                        y[0, vj] = T.Cast(dtype, _maybe_gelu(
                            T.rsqrt(row_sq[vj] * inv_c - row_x[vj] * inv_c * row_x[vj] * inv_c + eps_)
                            * (row_acc[vj] - row_x[vj] * inv_c * (s_reg[vj] if preload else w_sum[vj]))
                            + T.Cast(ACC, b_reg[vj] if preload else b[vj]), gelu))
            if pf_on and NEXT_PREFETCH_AT == "end":
                _next_prefetch(w_next, bx, TY, TX, PF_ELEMS, KN, pf_bytes)

    return ln_linear_decode if prefetch_next is not None else _without_param(ln_linear_decode, "w_next")


def fold_layernorm(gamma, beta, w, b):
    """make_ln_linear_decode's (W', b', s) from a layernorm's (gamma, beta) and the linear's (W, b):
    W' = W * gamma (per column) and b' = b + W @ beta, rounded to W's dtype as if gamma and the bias had been;
    s = the row sums of W' as rounded, float32 (summed in float64). Then, exactly up to those roundings,
    W @ ((x - mu) * rstd * gamma + beta) + b = rstd * (W' @ x - mu * s) + b' = W' @ ((x - mu) * rstd) + b'."""
    w_folded = (w * gamma.astype(np.float64)).astype(w.dtype)
    b_folded = (b + w.astype(np.float64) @ beta.astype(np.float64)).astype(b.dtype)
    return w_folded, b_folded, w_folded.astype(np.float64).sum(axis=1).astype(np.float32)


def make_linear_residual_decode(in_features: int, out_features: int, dtype: str = "float32", max_lanes: int = 8,
                                pdl: str | None = None, prefetch_w: bool = False, preload: bool = False):
    """c_proj + the residual add for one token, y = r + (x @ W.T + b): see the module docstring (no
    layernorm; a long row, gpt2's 3072 or gpt2-xl's 6400, gets 2-8 warps). Grid ceil(N / TY), 256 threads.
    pdl: as make_ln_linear_decode's.
    prefetch_w (with pdl): before the wait, the block's rows of W prefetched into L2 as well. The asm
    statements keep ptxas from moving W's loads after the wait (SASS, nvcc 13.0: all of them before it,
    against one without), at the price of registers: 52 a thread, 4 blocks of 256 an SM. For the
    attention's c_proj (gpt2-xl: 200 blocks), launched while the attention runs, so that its weights
    stream in then; not for the MLP's, whose 800 blocks need 8 an SM (see "not kept" above).
    preload: b loaded with W, r right after the wait (above)."""
    g = _geometry(in_features, out_features, dtype, max_lanes)
    K, N = T.int64(in_features), T.int64(out_features)
    one = T.int64(1)
    TX, TY, NB = T.int64(g["tx"]), T.int64(g["ty"]), T.int64(g["blocks"])
    V, CV, KO = T.int64(g["vec"]), T.int64(g["n_vec"]), T.int64(g["ko"])
    NP = NB * TY
    line, lines = cache_lines(in_features, dtype)          # a row of W: `lines` lines of `line` elements
    LE, NL, NI = T.int64(line), T.int64(lines), T.int64(-(-lines // g["tx"]))

    pdl_wait, pdl_early, pdl_loaded = pdl_flags(pdl)
    prefetch_w = bool(prefetch_w and pdl_wait)

    @T.prim_func(s_tir=True)
    def linear_residual_decode(x: T.Buffer((one, K), dtype), w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype),
                               r: T.Buffer((one, N), dtype), y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        w_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")      # per thread: KO x V
        x_reg = T.sblock_alloc_buffer((NP, TX, KO, V), dtype, scope="local")
        partial = T.sblock_alloc_buffer((NP, TX), ACC, scope="local")
        row_acc = T.sblock_alloc_buffer((NP,), ACC, scope="local")
        b_reg = T.sblock_alloc_buffer((NP,), dtype, scope="local")             # (preload: b and r)
        r_reg = T.sblock_alloc_buffer((NP,), dtype, scope="local")
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            if prefetch_w:
                _prefetch_w(w, bx, TX, TY, N, LE, NL, NI)
            _load_w(w, w_reg, bx, NB, TX, TY, KO, V, CV, N)
            if preload:
                _preload(b, b_reg, bx, TY, TX, N, False)
            if pdl_wait:
                read_coherently(TY, TX, T.address_of(x[0, 0]))
                read_coherently(TY, TX, T.address_of(r[0, 0]))
                grid_wait(TY, TX, pdl_early)
            if preload:
                _preload(r, r_reg, bx, TY, TX, N, True)
            _load_x(x, x_reg, bx, NP, TX, TY, KO, V, CV)
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
                        y[0, vj] = (r_reg[vj] if preload else r[0, vj]) + T.Cast(
                            dtype, row_acc[vj] + T.Cast(ACC, b_reg[vj] if preload else b[vj]))

    return linear_residual_decode


def ln_linear_ref(x, gamma, beta, w, b, eps=1e-5, gelu=False):
    """The two unfused kernels' references in sequence: layernorm (rounded to x's dtype), then linear."""
    h = layernorm_ref(x, gamma, beta, eps)
    return linear_gelu_ref(h, w, b) if gelu else linear_ref(h, w, b)


linear_residual_decode_ref = linear_residual_ref   # the same math as prefill's (linear.py)


# --- persistent, pipelined: a grid that fills part of each SM (pipe-decode, for gpt2-xl's qkv and MLP c_proj) -----
#
# Every linear above is one wave of blocks that together hold all of W in registers: the next kernel's blocks find
# room only as this one's leave, and each linear pays its start -- the PDL wait, x, W's first loads -- on the
# step's critical path (gpt2-xl on an H100: 0.2-0.3 us of overlap, ~2-3 us a linear beyond its bytes;
# docs/results/README.md, twenty-fourth session). make_linear_pipe_decode is the same product as a persistent grid
# of at most `blocks` blocks of PIPE_THREADS (by default 4 an SM on an H100's 132 SMs, at <= 128 registers a
# thread; 3 an SM, which leave a quarter of its registers free, measured slower), so that the next kernel's blocks
# come in as this one's leave, not all at its end: block b computes groups of TY rows b, b + blocks, ..., loading
# the next group's W while it multiplies this one's. With pdl, the first group's loads come before the wait (pinned
# there by an L2 prefetch of its rows, as prefetch_w), so that they are in flight while the kernel before still
# runs, and the next kernel may launch once every block is at its group before the last (PIPE_TRIGGER: or at its
# last, or at its start). x is copied once into
# shared memory after the wait (in registers beside two groups' W a thread would pass 128 registers), and the
# layernorm's statistics (ln), the same for every row, are summed once.
# Measured (gpt2-xl fp16, H100, CUPTI trace of the step in the CUDA graph; docs/results/pipe_decode_h100.md): all
# four linears of a layer so lose to the one-wave ones, 1521 us a step against 1511 for `fused`; qkv gains (6.1 us
# from the previous kernel's end against 8.0) but the rest lose most of it: with qkv and the MLP's c_proj alone
# pipelined (the model's choice), 1490 against 1511 at 3 blocks an SM, -1.4% (gpt2: +1.2%); at 4, 1471-1474 against
# 1515 (5 or 6: 1473; twenty-sixth session). Letting the next kernel launch at the start everywhere (as the
# one-wave linears do) fills the SMs with waiting grids: 1583-1787 us; the model does so only after qkv, whose next
# kernel, the attention, is small and has copies to run meanwhile.
PIPE_THREADS = 128
PIPE_BLOCKS = 4 * 132
PIPE_TRIGGER = "before-last"   # when the next kernel may launch: "start" (once the first group's loads are
                         # issued), "last" (every block at its last group: the next grid's blocks come in as this
                         # one's leave) or "before-last" (at the group before: the next kernel's first loads start
                         # one group sooner, while this grid's last loads are in flight). gpt2-xl, H100 (twenty-
                         # eighth session, docs/results/trigger_prefetch_h100.md): the step 1468.1-1469.3 us
                         # against 1472.2-1474.0 for "last" (the MLP's c_proj 9.86-9.89 us a launch, qkv after it
                         # 5.79-5.83 against 5.86); decode 683 / 683 tok/s against 679 / 679 back to back
PIPE_TRIGGERS = ("start", "last", "before-last")
# The groups whose W a block has in flight. 1: one group a trip of the loop, the next group's W copied into this
# one's registers at its end -- where the copy waits for the loads just issued (in SASS, 24-26 register moves at
# the loop's end: ptxas keeps it rolled), so that the loads of one group only are in flight while a block waits.
# The measurements above are this loop's (it was meant to keep two in flight). 2: two groups a trip, the two
# buffers' roles swapped, no copy ("pingpong"); 3: three groups a trip, three buffers in turn. Both measured
# slower (gpt2-xl's step, same loan: 1 in flight 1487.5 us, 2 in flight 1550.6 (4 an SM: 1513.8), 3 in flight at 2
# an SM 1561.2; docs/results/pipe_decode_h100.md): the copy's wait is not what holds the loop back.
PIPE_IN_FLIGHT = 1
# preload (make_linear_pipe_decode): where a group's bias and s (ln) or residual (else) are loaded. Without (as in
# preset `fused`): in its epilogue, after the lanes' sum -- in SASS (the MLP's c_proj, 4 groups a block) the two
# loads come after the block's barriers, so that each group's store waits out their latency (the bias from HBM)
# with nothing else in flight in that warp. With: a group ahead, beside its W (the first group's bias and s before
# the wait, its residual right after it), so that the epilogue finds them in registers; in_flight 1 only. As timed
# on gpt2-xl (H100, docs/results/attention_proj_preload_h100.md): the MLP's c_proj 9.82 -> 9.57 us a launch, qkv
# 5.79 -> 6.21 (and the attention after it 4.19 -> 4.48). model.py's PRELOAD_LINEARS picks the linears: none.


@T.macro(hygienic=False)
def _lanes_sum(src, dst, TY, TX):
    """The TX partial sums of each of a block's TY rows added across their threads (as _row_sum, for one group)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("lanes_sum"):
                vy = T.axis.spatial(TY, ty)
                vt = T.axis.reduce(TX, tx)
                with T.init():
                    dst[vy] = T.float32(0)
                dst[vy] = dst[vy] + src[vy, vt]


# (the pipelined grids' macros below are hygienic: their free names -- UNROLL, ACC, _prefetch_w -- are this module's,
# so kernels/lm_head.py's grid calls them too)
@T.macro(hygienic=True)
def _first_group(w, w_cur, bx, TY, TX, KO, V, CV, N, LE, NL, NI, prefetch):
    """A pipelined grid's step 1: block bx's first group of rows of W (row bx * TY + ty, past N: N - 1) into w_cur;
    with prefetch (a Python bool: with pdl), an L2 prefetch of those rows first, which keeps ptxas from moving the
    loads after the wait."""
    if prefetch:
        _prefetch_w(w, bx, TX, TY, N, LE, NL, NI)
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for ko in T.serial(KO, annotations=UNROLL):
                for v in T.vectorized(V):
                    with T.sblock("w_first"):               # opaque blocks: they use bx and it
                        if ko * TX + tx < CV:
                            w_cur[ty, tx, ko, v] = w[T.min(bx * TY + ty, N - T.int64(1)), (ko * TX + tx) * V + v]


@T.macro(hygienic=True)
def _load_group(w, w_dst, it, bx, NB, G, TY, TX, KO, V, CV, N):
    """Block bx's group `it` of a pipelined grid's G (its rows of W, group g's rows g * TY ..., past N: N - 1) into
    w_dst, if the block has such a group."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for ko in T.serial(KO, annotations=UNROLL):
                for v in T.vectorized(V):
                    with T.sblock("w_next"):
                        if ko * TX + tx < CV and bx + it * NB < G:
                            w_dst[ty, tx, ko, v] = w[T.min((bx + it * NB) * TY + ty, N - T.int64(1)),
                                                     (ko * TX + tx) * V + v]


@T.macro(hygienic=True)
def _x_to_shared(x, x_sh, TY, TX, XI, V, CV):
    """A pipelined grid's step 2: x [1, K] into shared memory, once for the block, a vector a thread at a time."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for i in T.serial(XI):
                for v in T.vectorized(V):
                    with T.sblock("x_load"):
                        if (i * TY + ty) * TX + tx < CV:
                            x_sh[((i * TY + ty) * TX + tx) * V + v] = x[0, ((i * TY + ty) * TX + tx) * V + v]


@T.macro(hygienic=True)
def _dot_shared(w_own, x_sh, x_vec, part, TY, TX, KO, V, CV):
    """A group's dot products: each thread its registers of W times x from shared memory (one 16-byte shared load
    a vector), summed in float32 into part."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            with T.sblock("dot"):
                vy, vt = T.axis.remap("SS", [ty, tx])
                part[vy, vt] = T.float32(0)
                for ko in T.serial(KO, annotations=UNROLL):
                    if ko * TX + vt < CV:
                        for v in T.vectorized(V):
                            x_vec[vy, vt, v] = x_sh[(ko * TX + vt) * V + v]     # one 16-byte shared load
                        for v in T.serial(V, annotations=UNROLL):
                            part[vy, vt] = part[vy, vt] + T.Cast(ACC, w_own[vy, vt, ko, v]) * T.Cast(
                                ACC, x_vec[vy, vt, v])


@T.macro(hygienic=True)
def _swap(w_cur, w_next, TY, TX, KO, V):
    """The next group's W, loaded during this one, copied into this one's registers (one group in flight)."""
    for ty in T.thread_binding(TY, thread="threadIdx.y"):
        for tx in T.thread_binding(TX, thread="threadIdx.x"):
            for ko in T.serial(KO, annotations=UNROLL):
                for v in T.vectorized(V):
                    with T.sblock("w_swap"):
                        vy, vt, vo, vv = T.axis.remap("SSSS", [ty, tx, ko, v])
                        w_cur[vy, vt, vo, vv] = w_next[vy, vt, vo, vv]


def pipe_grid(in_features: int, out_features: int, dtype: str = "float16", max_lanes: int = 8,
              blocks: int = PIPE_BLOCKS, threads: int = PIPE_THREADS) -> tuple[int, ...]:
    """make_linear_pipe_decode's grid: (vec, n_vec, tx, ty, groups, blocks, passes) -- vectors of `vec` elements,
    n_vec of them a row of W; TX lanes a row, TY rows a group (TX * TY = threads a block); `groups` groups of rows
    over as few blocks as give each the same number of groups (passes), at most `blocks` (a persistent grid lasts as
    long as its blocks with the most groups)."""
    vec = vector_width(in_features, dtype, max_lanes)
    n_vec = in_features // vec
    tx = min(lanes_per_row(n_vec), threads)
    ty = threads // tx
    groups = -(-out_features // ty)
    blocks = -(-groups // -(-groups // blocks))
    return vec, n_vec, tx, ty, groups, blocks, -(-groups // blocks)


def make_linear_pipe_decode(in_features: int, out_features: int, dtype: str = "float16", ln: bool = False,
                            gelu: bool = False, eps: float = 1e-5, max_lanes: int = 8, pdl: str | None = None,
                            blocks: int = PIPE_BLOCKS, trigger: str = PIPE_TRIGGER,
                            in_flight: int = PIPE_IN_FLIGHT, preload: bool = False, threads: int = PIPE_THREADS):
    """One token's linear as a persistent pipelined grid (see above). ln=False: y = r + (x @ W.T + b), the inputs
    of make_linear_residual_decode (x, W, b, r); ln=True: make_ln_linear_decode's folded layernorm (x, W', b', s),
    with GELU where gelu. trigger: when the next kernel may launch (PIPE_TRIGGER, with pdl); in_flight: the groups
    whose W a block has in flight (PIPE_IN_FLIGHT); preload: each group's epilogue operands loaded a group ahead
    (above). Grid: as few blocks as give each the same number of groups, at most
    `blocks`; `threads` threads a block (PIPE_THREADS, or 256): TX lanes a row (lanes_per_row, at most the block),
    TY = threads / TX rows a group."""
    check_dtype(dtype)
    if threads not in (128, 256):
        raise RuleError(f"threads={threads}: choose 128 or 256 a block")
    vec, n_vec, tx, ty, groups, blocks, passes = pipe_grid(in_features, out_features, dtype, max_lanes, blocks,
                                                           threads)
    K, N = T.int64(in_features), T.int64(out_features)
    one = T.int64(1)
    TX, TY, NB = T.int64(tx), T.int64(ty), T.int64(blocks)
    V, CV, KO = T.int64(vec), T.int64(n_vec), T.int64(-(-n_vec // tx))
    G, ITERS = T.int64(groups), T.int64(passes)
    TRIPS = T.int64(-(-passes // in_flight))                   # in_flight > 1: trips of in_flight groups
    AHEAD = T.int64(max(1, in_flight - 1))                     # the group loaded is AHEAD after the one multiplied
    XI = T.int64(-(-n_vec // threads))                         # vectors of x a thread copies into shared memory
    wide = threads == 256
    line, lines = cache_lines(in_features, dtype)
    LE, NL, NI = T.int64(line), T.int64(lines), T.int64(-(-lines // tx))
    inv_c = T.float32(1.0 / in_features)
    eps_ = T.float32(eps)
    aux_shape, aux_dtype = ((out_features,), ACC) if ln else ((1, out_features), dtype)   # s, or the residual r
    pdl_wait, _early, _loaded = pdl_flags(pdl)
    if trigger not in PIPE_TRIGGERS:
        raise RuleError(f"unknown trigger {trigger!r}: choose one of {', '.join(PIPE_TRIGGERS)}")
    if in_flight not in (1, 2, 3):
        raise RuleError(f"in_flight={in_flight}: choose 1, 2 or 3 groups")
    if preload and in_flight != 1:
        raise RuleError(f"preload with in_flight={in_flight}: the epilogue's operands are preloaded in the loop of "
                        "one group a trip only")
    trigger_late = pdl_wait and trigger != "start"
    AT = T.int64(max(passes - (2 if trigger == "before-last" else 1), 0))   # (late) the group that launches the next
    residual = not ln                         # (TVMScript resolves a plain bool in an `if` while parsing)

    def row(group, y_):                       # the output row of thread row y_ in a group (past N: N - 1, unstored)
        return T.min(group * TY + y_, N - one)

    @T.macro(hygienic=True)       # (the shapes and flags from here; the kernel's buffers and bx passed in)
    def load_epilogue(e_b, e_a, it, bx, b, aux, bias, rest):
        """preload: the operands of block bx's group `it`'s epilogue, for its rows' lane 0: with bias, b (and with
        ln, s: read-only, so callable before the wait); with rest, the residual (written by the kernel before)."""
        for ty in T.thread_binding(TY, thread="threadIdx.y"):
            for tx in T.thread_binding(TX, thread="threadIdx.x"):
                with T.sblock("e_next"):
                    if tx == T.int64(0) and bx + it * NB < G:
                        if bias:
                            e_b[ty] = b[row(bx + it * NB, ty)]
                            if ln:
                                e_a[ty] = aux[row(bx + it * NB, ty)]
                        if rest:
                            if residual:
                                e_a[ty] = aux[0, row(bx + it * NB, ty)]

    @T.macro(hygienic=True)       # (the shapes and flags from here; the kernel's buffers and bx passed in)
    def one_group(w_own, w_other, part, acc, it, bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq, e_own_b, e_own_a,
                  e_other_b, e_other_a):
        """Group `it` of block bx: group it + AHEAD's W loaded into w_other (preload: its epilogue's operands into
        e_other), this one's (in w_own) multiplied by x, summed across its lanes (part -> acc) and stored."""
        if trigger_late:
            if it == AT:                                 # every block at its last group, or the one before
                launch_next(TY, TX)
        _load_group(w, w_other, it + AHEAD, bx, NB, G, TY, TX, KO, V, CV, N)
        if preload:
            load_epilogue(e_other_b, e_other_a, it + AHEAD, bx, b, aux, True, True)
        _dot_shared(w_own, x_sh, x_vec, part, TY, TX, KO, V, CV)
        _lanes_sum(part, acc, TY, TX)
        for ty in T.thread_binding(TY, thread="threadIdx.y"):
            for tx in T.thread_binding(TX, thread="threadIdx.x"):
                with T.sblock("epilogue"):
                    vy = T.axis.spatial(TY, ty)
                    j = T.axis.spatial(G * TY, (bx + it * NB) * TY + ty)        # the output row
                    T.where(tx == T.int64(0) and (bx + it * NB) * TY + ty < N)
                    # (preload: b and s / the residual from the registers loaded a group ahead)
                    if ln:
                        # mu = row_x / C, var = row_sq / C - mu^2: rstd * (W' @ x - mu * s) + b'
                        y[0, j] = T.Cast(dtype, _maybe_gelu(
                            T.rsqrt(row_sq[vy] * inv_c - row_x[vy] * inv_c * row_x[vy] * inv_c + eps_)
                            * (acc[vy] - row_x[vy] * inv_c * (e_own_a[vy] if preload else aux[j]))
                            + T.Cast(ACC, e_own_b[vy] if preload else b[j]), gelu))
                    else:
                        y[0, j] = (e_own_a[vy] if preload else aux[0, j]) + T.Cast(
                            dtype, acc[vy] + T.Cast(ACC, e_own_b[vy] if preload else b[j]))

    @T.prim_func(s_tir=True)
    def linear_pipe_decode(x: T.Buffer((one, K), dtype), w: T.Buffer((N, K), dtype), b: T.Buffer((N,), dtype),
                           aux: T.Buffer(aux_shape, aux_dtype), y: T.Buffer((one, N), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        w_cur = T.sblock_alloc_buffer((TY, TX, KO, V), dtype, scope="local")     # this group's W, per thread
        w_next = T.sblock_alloc_buffer((TY, TX, KO, V), dtype, scope="local")    # the next group's
        w_third = T.sblock_alloc_buffer((TY, TX, KO, V), dtype, scope="local")   # (in_flight 3: the one after)
        x_sh = T.sblock_alloc_buffer((K,), dtype, scope="shared")                # x, once for the block
        x_vec = T.sblock_alloc_buffer((TY, TX, V), dtype, scope="local")          # one vector of it at a time
        partial = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        partial_b = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")          # (in_flight > 1: a trip's 2nd
        partial_c = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")          # and 3rd group's)
        x_part = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        sq_part = T.sblock_alloc_buffer((TY, TX), ACC, scope="local")
        row_acc = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        row_acc_b = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        row_acc_c = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        row_x = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        row_sq = T.sblock_alloc_buffer((TY,), ACC, scope="local")
        e_b = T.sblock_alloc_buffer((TY,), dtype, scope="local")                 # (preload: this group's b
        e_a = T.sblock_alloc_buffer((TY,), aux_dtype, scope="local")             # and s or residual,
        e_b_next = T.sblock_alloc_buffer((TY,), dtype, scope="local")            # and the next group's)
        e_a_next = T.sblock_alloc_buffer((TY,), aux_dtype, scope="local")
        for bx in T.thread_binding(NB, thread="blockIdx.x"):
            if wide:        # __launch_bounds__(256, 4): ptxas held to 64 registers, 4 blocks an SM (one wave)
                T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 4)
            # 1. the first group's W, before the wait (with pdl: an L2 prefetch of its rows keeps the loads there)
            _first_group(w, w_cur, bx, TY, TX, KO, V, CV, N, LE, NL, NI, pdl_wait)
            if preload:
                load_epilogue(e_b, e_a, T.int64(0), bx, b, aux, True, False)
            if pdl_wait:
                read_coherently(TY, TX, T.address_of(x[0, 0]))
                if residual:                             # the residual stream, written by a kernel before too
                    read_coherently(TY, TX, T.address_of(aux[0, 0]))
                grid_wait(TY, TX, not trigger_late)      # the next kernel may launch now, or at group AT
            if preload:
                load_epilogue(e_b, e_a, T.int64(0), bx, b, aux, False, True)
            # 2. x into shared memory, once (and with ln its statistics, the same for every row): in registers
            # beside two groups' W it would take the thread past 128 registers
            _x_to_shared(x, x_sh, TY, TX, XI, V, CV)
            if ln:
                for ty in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("x_sums"):
                            vy, vt = T.axis.remap("SS", [ty, tx])
                            x_part[vy, vt] = T.float32(0)
                            sq_part[vy, vt] = T.float32(0)
                            for ko in T.serial(KO, annotations=UNROLL):
                                if ko * TX + vt < CV:
                                    for v in T.serial(V, annotations=UNROLL):
                                        x_part[vy, vt] = x_part[vy, vt] + T.Cast(ACC, x_sh[(ko * TX + vt) * V + v])
                                        sq_part[vy, vt] = sq_part[vy, vt] + T.Cast(
                                            ACC, x_sh[(ko * TX + vt) * V + v]) * T.Cast(ACC, x_sh[(ko * TX + vt) * V + v])
                _lanes_sum(x_part, row_x, TY, TX)
                _lanes_sum(sq_part, row_sq, TY, TX)
            # 3. the block's groups, one after the other: the next group's W loaded, this one's multiplied
            if in_flight == 2:                               # two groups a trip, the buffers' roles swapped
                for trip in T.serial(TRIPS):
                    one_group(w_cur, w_next, partial, row_acc, trip * T.int64(2),
                              bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                              e_b, e_a, e_b_next, e_a_next)
                    if trip * T.int64(2) + one < ITERS:
                        one_group(w_next, w_cur, partial_b, row_acc_b, trip * T.int64(2) + one,
                                  bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                                  e_b, e_a, e_b_next, e_a_next)
            elif in_flight == 3:                             # three groups a trip, three buffers in turn
                _load_group(w, w_next, one, bx, NB, G, TY, TX, KO, V, CV, N)   # (the first group's: before the wait)
                for trip in T.serial(TRIPS):
                    one_group(w_cur, w_third, partial, row_acc, trip * T.int64(3),
                              bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                              e_b, e_a, e_b_next, e_a_next)
                    if trip * T.int64(3) + one < ITERS:
                        one_group(w_next, w_cur, partial_b, row_acc_b, trip * T.int64(3) + one,
                                  bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                                  e_b, e_a, e_b_next, e_a_next)
                    if trip * T.int64(3) + T.int64(2) < ITERS:
                        one_group(w_third, w_next, partial_c, row_acc_c, trip * T.int64(3) + T.int64(2),
                                  bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                                  e_b, e_a, e_b_next, e_a_next)
            else:                                            # one group a trip, the next group's W copied over
                for it in T.serial(ITERS):
                    one_group(w_cur, w_next, partial, row_acc, it, bx, w, b, aux, y, x_sh, x_vec, row_x, row_sq,
                              e_b, e_a, e_b_next, e_a_next)
                    _swap(w_cur, w_next, TY, TX, KO, V)
                    if preload:
                        for ty in T.thread_binding(TY, thread="threadIdx.y"):
                            for tx in T.thread_binding(TX, thread="threadIdx.x"):
                                with T.sblock("e_swap"):
                                    if tx == T.int64(0):
                                        e_b[ty] = e_b_next[ty]
                                        e_a[ty] = e_a_next[ty]

    return linear_pipe_decode

