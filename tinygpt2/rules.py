"""DLight rule lists, as plain data.

A rule list is what schedules the hand-written kernels for a target. It can be given as

    "default"                              a named preset (presets(target_kind) below)
    "gemv,reduction,fallback"              rule names, comma-separated (the CLI's --rules)
    ["gemv", "reduction", "fallback"]      the same as a list
    [dl.gpu.GEMV(), MyRule()]              rule objects, the user's own ScheduleRule subclasses included
    "my_pkg.my_rules:RULES"                "module:attr" naming any of the above

and `resolve(rules, target_kind)` turns any of them into one list of rule objects, in one place.
DLight tries the rules of a list in order on each kernel; the first that returns a schedule wins.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence

from tinygpt2.errors import RuleError
from tinygpt2.tensor_core import PipelinedTensorCoreMatmul, TensorCoreMatmul
from tinygpt2.tvm_shim import dl, simplify, tirx, tvm


class Request(dl.ScheduleRule):
    """An entry that is not a schedule but a request to the model builder (hand_kernels below ->
    model.build_module's `hand`): the model is built with kernels written already scheduled, which no rule then
    touches. It matches no kernel itself."""

    def apply(self, func, target, tunable):
        return None


class FusedDecode(Request):
    """Not a schedule: a request for decode's hand-scheduled GPU kernels (model.build_module's `gpu`).

    On a GPU a decode step is bound by launches and by how near its linears stream their weights to the
    memory's bandwidth. With this entry in the list the model's decode step is built with kernels written
    already scheduled, which no rule then touches: decode_attention (kv_append + scores + softmax +
    values in one call, split over chunks of keys), ln_linear_qkv / ln_linear_fc_gelu (ln_1 / ln_2
    folded into the linear after them, their gamma and beta into its weights: weights.fold_layernorms,
    for prefill too) and linear_mlp_proj (the MLP's c_proj + the residual add, every
    load of W issued up front): 5 calls a layer instead of 10; and decode_greedy's argmax + advance as
    one kernel of one block (argmax_advance: each logit read once).
    Without it the graph is the plain one, every kernel of it the rule list's to schedule. It matches
    no kernel itself.
    """


class HandSoftmax(Request):
    """Not a schedule: a request for prefill's hand-scheduled causal softmax (kernels/attention.py).
    On a GPU, make_causal_softmax_gpu: each score read once, only those the causal mask keeps, into
    shared memory, where DLight's GeneralReduction reads the row from global memory three times. On the
    CPU, make_causal_softmax_cpu: each row's kept keys in whole vectors and a scalar rest, exp as
    arithmetic, where DLight's CPU Reduction leaves a bounds test in every vector step (which TVM then
    runs as scalar code) and a libm call per exp. Like `fused-decode`, it matches no kernel itself;
    without it the softmax is the rule list's to schedule.
    """


class FlashPrefill(Request):
    """Not a schedule: a request for prefill's attention as one hand-scheduled kernel
    (kernels/flash_attention.py): attn_scores, causal_softmax and attn_values fused, the keys past the
    causal diagonal never visited, the scores never [H, n, m] in memory. On a GPU make_flash_attention:
    the scores in shared memory and registers, and on CUDA in float16 q.k^T and p.v on tensor cores
    (WMMA). On the CPU make_flash_attention_cpu: a query row a task, its scores in a row buffer in L1.
    Like `fused-decode`, it matches no kernel itself; without it the three kernels are the rule list's
    to schedule.
    """


class FlashPrefillMma(Request):
    """Not a schedule: a request that `flash-prefill`'s kernel (which it needs) be
    kernels/flash_attention_mma.py's on CUDA in float16 with heads 64 wide: FlashAttention-2's layout, q.k^T and
    p.v on mma.sync with fragments from ldmatrix, the softmax and P in registers, where make_flash_attention's
    WMMA fragments send every tile's S and P V through shared memory (gpt2-xl's 1024-token prefill spends 4.5 of
    its 20.3 ms of kernels in that attention on an H100, ~36 TFLOP/s). CUDA sm_90 and later (the one family of
    GPUs it is built and checked for); dropped elsewhere. In preset `fused` since the twentieth session: on an H100
    gpt2-xl's 1024-token attention takes 30.6 us a layer instead of 83.9 (110 TFLOP/s against 40; torch SDPA 20.5),
    and its prefill@1024 57.3k tok/s instead of 49.1k (docs/results/cuda_flash_mma_h100.md). It matches no kernel.
    """


class MatmulMma(Request):
    """Not a schedule: a request that prefill's four linears (c_attn, the two c_projs with their residual, c_fc with
    GELU) be kernels/linear_mma.py's on CUDA in float16: written already scheduled on mma.sync, fragments by
    ldmatrix from tiles that cp.async streams in (CUTLASS's multistage GEMM), where tensor-core-matmul-async
    schedules linear.py's kernels onto WMMA. CUDA sm_90 and later (the one family of GPUs it is built and checked
    for); dropped elsewhere, and in float32; matmul-wgmma wins where a list names both. Opt-in, in no preset: on an
    H100 both its versions ran slower than WMMA (gpt2-xl's linears at 1024 tokens 16.4, then 15.9 ms, against 14.7;
    prefill@1024 56.6k -> 50.0k tok/s with it; docs/results/bench_matmul_mma_h100.md). It matches no kernel.
    """


class MatmulWgmma(Request):
    """Not a schedule: a request that prefill's four linears be kernels/linear_wgmma.py's on CUDA sm_90a in float16:
    written already scheduled on Hopper's warpgroup MMA (wgmma.mma_async, both operands read from shared memory
    through descriptors, in the 128-byte swizzle that cp.async writes), the instruction cuBLAS uses there, where
    matmul-mma's mma.sync takes them through registers. Dropped off sm_90a and in float32; before matmul-mma when a
    list names both. In preset `fused`: on an H100 gpt2-xl's four linears at 1024 tokens take 8.6 ms (48 layers)
    instead of the WMMA schedule's 14.8 (cuBLAS 6.7), and its prefill@1024 runs at 86.6k tok/s instead of 56.3k
    (docs/results/bench_matmul_wgmma_h100.md). It matches no kernel.
    """


class PDLDecode(Request):
    """Not a schedule: a request that decode's hand-scheduled kernels (those of `fused-decode`, which it
    needs) be launched with programmatic dependent launch (kernels/_pdl.py; CUDA sm_90 and later, dropped
    elsewhere). Each issues its weight loads, then waits for the kernel before it; the GPU launches the
    next kernel as this one's blocks exit, ahead of its completion. On an H200 this took gpt2-xl's
    decode step in the CUDA graph from 1659 to 1627 us (the launch gaps: 24 -> 4 us a step; W's loads
    are written before the wait, but ptxas places them after it: docs/results/README.md, last section).
    The attention's c_proj is hand-scheduled (make_linear_residual_decode) so that it takes part, and
    the attention's two kernels, bound by latency, let the next launch at once: c_proj then loads its
    weights (prefetch_w) while the attention runs (gpt2-xl 1469.3 -> 1426.7 us, 2026-12-04).
    Variants, measured slower: `pdl-decode-loaded` lets the next kernel launch once a linear's loads
    are used (1697 us) and `pdl-decode-early` right after its weight loads (1748 us): the next
    kernels' weight streams then slow the critical path (both measured before the attention's c_proj
    took part this way). It matches no kernel.
    """

    mode = "exit"


class DecodeCluster(Request):
    """Not a schedule: a request that decode's ln_1 + c_attn and its attention (ln_linear_qkv and
    decode_attention of `fused-decode`, which it needs) be one kernel, a thread-block cluster of 4 blocks per
    head (kernels/decode_cluster.py): the head's q, k and v never go through L2, and its attention starts
    without a kernel boundary. CUDA sm_90 and later, float16, head_dim 64; dropped elsewhere. In no preset:
    on an H100 gpt2-xl's step in the CUDA graph takes as long as with `fused` alone (1667.8 us against
    1666.8-1667.2; the kernel's docstring says why). It matches no kernel.
    """


class AttentionCluster(Request):
    """Not a schedule: a request that decode's attention (decode_attention of `fused-decode`: a kernel over
    chunks of keys, then a kernel merging them) be one kernel, a thread-block cluster of 4 blocks per head
    (kernels/decode_cluster.py's make_attention_cluster): the parts merged through distributed shared memory,
    no partial results through L2, one kernel boundary fewer. ln_linear_qkv stays, and lets it launch at once, so
    that its blocks copy their K and V rows while qkv streams. CUDA sm_90 and later, float16, head_dim 64;
    dropped elsewhere; decode-cluster, where both are listed, wins. In preset `fused`: on an H100 gpt2-xl's step
    in the CUDA graph takes 1572.4 us against 1667.6-1667.9 without it (the attention 3.46 us a layer after qkv
    against 4.80 + 1.44, qkv 8.10 against 7.23), on an H200 1292.2 against 1404.0, gpt2's 188.9 against 208.5
    (docs/results/trace_decode_h100_attention_cluster.md). The kernel also prefetches a quarter of the layer's
    c_fc weights into L2 after its wait, while HBM idles: 1571.0 -> 1514.0 us on an H100
    (docs/results/trace_decode_h100_prefetch_fc.md). Its parts reach rank 0 by st.async on an mbarrier, not
    through a cluster barrier (a GPU-wide fence on sm_90): 1457 -> 1428 us on an H100
    (docs/results/attention_async_merge_h100.md). It matches no kernel.
    """


class AttentionProj(Request):
    """Not a schedule: a request that attention-cluster's kernel also do the attention's c_proj, split over the
    heads, each head's products added into the residual stream by fp16 atomics
    (kernels/decode_cluster.py's make_attention_proj_cluster): one kernel boundary fewer a layer, the c_proj's
    weights loaded before the wait. Needs fused-decode, pdl-decode and attention-cluster (CUDA sm_90 and later,
    float16, head_dim 64); dropped elsewhere; not with side-prefetch, whose marks count the c_proj kernel. An
    experiment, in no preset: correct on an H100 but slower there, gpt2-xl's step 1472.1 -> 1524.1 us (the attention
    with c_proj in it takes 7.68 us from qkv's end against 4.16 + 2.02 for the two kernels;
    docs/results/attention_proj_preload_h100.md). The sum's order is the atomics', so fp16 logits are not
    bit-reproducible from run to run. It matches no kernel.
    """


class SidePrefetch(Request):
    """Not a schedule: a request that decode's weights be prefetched into L2 by a kernel on a second stream,
    beside the step (kernels/side_prefetch.py): each of decode's linears adds its W's KiB to a progress word as it
    starts, and the prefetcher, launched by the executor with each step, brings in a policy's part of each matrix
    while the kernel before it runs (by default c_fc's second quarter during the attention's c_proj; the first is
    attention_cluster's). Nothing in the step waits for it. Needs fused-decode, pdl-decode and attention-cluster
    (CUDA sm_90 and later, float16); dropped elsewhere. In no preset: on a raw-CUDA skeleton of gpt2-xl's layer
    (H100) it took a layer from 35.4 us to 31.9 (docs/results/bench_side_prefetch_h100.md), but in the model it
    gains nothing: while a linear streams, what a prefetch saves the next kernel it costs the one running; the best
    policy is within 3 us of `fused`'s 1514 us step (H100, docs/results/trace_side_prefetch_h100.md). It matches no
    kernel.
    """


class PipeDecode(Request):
    """Not a schedule: a request that decode's qkv and MLP c_proj (two of `fused-decode`'s linears, launched with
    PDL; model.py's PIPE_DECODE_LINEARS), where each would give a block 3 groups of rows or more (both or neither,
    model.pipelined: gpt2-xl's, none of the smaller sizes'), be persistent pipelined grids that fill part of each SM
    (kernels/ln_linear.py's make_linear_pipe_decode: at most 4 blocks of 128 an SM, a block's groups of rows one
    after the other, the next group's W loaded while this one's is multiplied), each loading its first group's W
    before its wait and letting the next kernel launch at its group before the last (qkv: at once, for the
    attention) -- so that the next kernel's blocks come in while this one ends. The linears it replaces overlap the
    kernel before them by 0.2-0.3 us only and pay their start on the step's critical path (gpt2-xl, H100: ~2-3 us a
    linear beyond its bytes; docs/results/README.md, twenty-fourth session). Needs fused-decode, and pdl-decode for
    its point: CUDA sm_90 and later only (SM90_REQUESTS; sized for float16 and an H100's 132 SMs). In preset
    `fused`: gpt2-xl fp16's step 2.8% shorter in a trace (1471-1474 us against 1515), its decode 677 tok/s against
    661 in the benchmark (H100, docs/results/pipe_decode_h100.md). It matches no kernel.
    """


class PDLDecodeLoaded(PDLDecode):
    mode = "loaded"


class PDLDecodeEarly(PDLDecode):
    mode = "early"


class SmallBlockGEMV(dl.gpu.GEMV):
    """DLight's GEMV rule, scheduled as for a GPU whose blocks hold at most `max_threads` threads.

    On CUDA, DLight's GEMV gives every block 16 rows x 32 lanes (512 threads), so decode's c_proj
    (768 outputs in gpt2) runs as 48 blocks on an H200's 132 SMs, at 1.2 TB/s. Capping the threads
    per block is the one knob of DLight's own config that the rule reads from the target
    (`max_num_threads`: it halves the rows a block until it fits): with 128, 4 rows a block and 4x
    the blocks. The schedule is otherwise DLight's, unchanged.
    """

    def __init__(self, max_threads: int = 128):
        super().__init__()
        self.max_threads = max_threads

    def apply(self, func, target, tunable):
        if int(target.attrs.get("max_num_threads", self.max_threads)) > self.max_threads:
            target = tvm.target.Target({**target.export(), "max_num_threads": self.max_threads})
        return super().apply(func, target, tunable)


class TiledMatmul(dl.gpu.Matmul):
    """DLight's Matmul rule on CUDA cores for float32, with the block's tile as knobs, its tiles in shared
    memory stored K-major and the next K-step loaded into registers during this one.

    On CUDA, DLight's Matmul gives a block 8 x 16 threads, each computing 4 x 4 outputs: a 32 x 64 tile of
    C, its K-steps of 16 staged in shared memory as they lie in memory (K innermost), 2-wide loads.
    `block` is threads (x: C's rows, the tokens; y: its columns, the output features), `micro` the outputs
    a thread computes, `k` the K-step, `vector` the width of the loads into shared memory and of C's
    stores, `unroll` DLight's unroll limit (a thread's K-step is unrolled when micro x micro x k fits in
    it), `k_major` the tiles' layout in shared memory (to_k_major, below), `min_out` the narrowest output
    it takes (narrower matmuls go on to the rules after it), `kinds` the targets it applies to (elsewhere
    DLight's own config and layout).

    `prefetch` loads the next K-step into registers while the block computes this one
    (prefetch_to_registers, below).

    The default, 16 x 8 threads of 4 x 8 (a 64 x 64 tile, 128 threads), K-major, 4-wide loads, K-steps of 32
    with the next one prefetched, was chosen among 30-odd tiles on gpt2-xl's four linears on an H200
    (scripts/bench_matmul.py --dtype float32; docs/results/bench_matmul_fp32_h200.md). A prefill's linears,
    ms, against DLight's config:

        tokens   DLight   K-steps of 16   this (32, prefetched)   the best tile measured there   cuBLAS
        128      43.3     40.8-40.9       31.0-31.8               26.1 (32 x 64, prefetched)     20.0-20.1
        512      --       62.5            56.4                    56.4                           46.4
        1024     209.0    107.2-107.5     103.2-103.4             101.1-101.6 (64 x 128, pref.)  80.2

    K-major is what paid most (this rule's first tile, 64 x 128 in DLight's layout: 154.6 -> 115.3 ms at
    1024 tokens K-major, 105.9 with 4-wide loads); among tiles, 64 x 64 is never far from the best at any
    length, and the rows (tokens) are not known when the kernel is built. Only float32 kernels: a float16
    one is left to the rules after it (DLight's Matmul tensorizes it on sm_70+), so fp16 builds do not
    change.
    """

    def __init__(self, block=(16, 8), micro=(4, 8), k=32, vector=4, vthread=(1, 1), min_out=0,
                 kinds=("cuda", "rocm"), k_major=True, unroll=256, prefetch=True):
        super().__init__()
        self.tile = dict(block_size_x=block[0], block_size_y=block[1], micro_size_x=micro[0],
                         micro_size_y=micro[1], micro_size_k=k, vector_size=vector, vthread_x=vthread[0],
                         vthread_y=vthread[1], unroll=unroll)
        self.min_out, self.kinds, self.k_major, self.prefetch = min_out, tuple(kinds), k_major, prefetch

    def get_configs(self, target):
        config = super().get_configs(target)
        if target.kind.name in self.kinds:      # the tile, with DLight's CUDA settings (rows of shared memory padded)
            config = dataclasses.replace(config, storage_align=True, **self.tile)
        return config

    def apply(self, func, target, tunable):
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(dl.analysis.get_root_block(sch))
        if not blocks or {str(r.source.dtype) for b in blocks for r in sch.get(b).reads} & {"float16", "bfloat16"}:
            return None                                   # not a float32 matmul: DLight's Matmul's
        out = sch.get(blocks[-1]).writes[0].source.shape[-1]          # the kernel's output: [.., n, out]
        if not isinstance(out, tvm.tirx.IntImm) or out.value < self.min_out:
            return None
        sch = super().apply(func, target, tunable)
        if sch is not None and target.kind.name in self.kinds:
            if self.k_major:
                to_k_major(sch)
            if self.prefetch:
                prefetch_to_registers(sch)
        return sch


def to_k_major(sch) -> None:
    """Store the shared-memory tiles of a matmul DLight's Matmul scheduled K-major: [.., k, i], not [.., i, k].

    As DLight leaves them, a thread's rows of A (and of B) at one k lie a row apart, K innermost (with
    2-wide loads, rows of 16 k's padded to 18 floats): a K-step of 4 x 8 outputs is loaded into registers
    whole (120 registers a thread, in nvcc 13's SASS), and the 16 threads of a warp that read different rows
    start them in 4 banks (rows 4 x 18 floats apart). K-major, a thread's 4 rows at one k are 4 neighbouring
    floats: one 16-byte load for A's 4, two for B's 8, a warp's loads consecutive 16-byte words: 48 16-byte
    loads a K-step (42 of 16 bytes and 12 of 8 before), at 71 registers. The price is the copy in: a
    thread's consecutive k's are now a row apart, stored one float at a time. Each row is padded by 4
    floats (to 4 mod 32), which keeps the loads 16-byte aligned and halves the stores' bank conflicts
    (a warp's 4-wide copy: 2-way, 4-way with rows of 64).
    """
    for block in _shared_copies(sch):
        ndim = len(sch.get(block).writes[0].source.shape)
        sch.transform_layout(block, ("write", 0), lambda *i: (*i[:-2], i[-1], i[-2]))
        sch.unannotate(block, "buffer_dim_align")             # DLight's padding, of the old rows
        sch.storage_align(block, 0, axis=ndim - 2, factor=32, offset=4)


def _shared_copies(sch) -> list:
    """The blocks of a scheduled matmul that copy its operands' tiles into shared memory."""
    return [b for b in sch.get_child_blocks(dl.analysis.get_root_block(sch))
            if sch.get(b).writes[0].source.scope() == "shared"]


def prefetch_to_registers(sch) -> None:
    """Load a matmul's next K-step from global memory into registers while the block computes this one.

    As DLight's Matmul leaves it, a K-step is: copy A's and B's tiles into shared memory (global loads,
    then shared stores), barrier, compute, barrier. Each copy's global loads are then a memory latency
    that only other blocks on the SM can hide. Here each copy is split in two (TVM's
    `manifest_shared_memory_local_stage`: global -> registers, registers -> shared), and the K loop is
    software-pipelined (InjectSoftwarePipeline) so that a K-step runs

        load step k+1 into registers;  barrier;  compute step k from shared;  barrier;  store step k+1 to shared

    One copy of the tiles in shared memory, as before (the stores come after the compute that reads
    them); the loads are issued before the compute and used after it. The registers stay registers: each
    copy's local stage is a thread's own vectors, indexed by unrolled constants (3-5 more a thread, no
    stack frame in ptxas's report; tests/test_cuda_compile.py).

    Measured on an H200 (gpt2-xl's linears, docs/results/bench_matmul_fp32_h200.md): with K-steps of 16
    it gains little on the 64 x 64 tile (107.2 -> 108.0 ms at 1024 tokens, 40.9 -> 39.6 at 128) and more
    on 64 x 128 (106.0 -> 101.1); with K-steps of 32, a longer compute to hide the loads behind, 110.3 ->
    103.2 at 1024 tokens, 36.7 -> 31.8 at 128 and 62.7 -> 56.4 at 512 on the 64 x 64 tile (K-steps of 32
    without it lose at 1024: 107.5 with 16).
    """
    copies = _shared_copies(sch)
    computes = [b for b in sch.get_child_blocks(dl.analysis.get_root_block(sch))
                if any(r.source.scope() == "shared" for r in sch.get(b).reads)]
    if not copies or len(computes) != 1:
        return                                         # not the shape DLight's Matmul leaves: nothing to pipeline
    # the K loop: the innermost loop around both the copies and the compute
    compute_loops = [sch.get(loop) for loop in sch.get_loops(computes[0])]
    k_outer = [loop for loop in sch.get_loops(copies[0]) if any(sch.get(loop).same_as(c) for c in compute_loops)][-1]
    for block in copies:
        sch.annotate(block, "tirx.manifest_shared_memory_local_stage", 1)
    n = len(copies)
    # after the split the K loop's body is (copy_i's load, copy_i's store) for each copy, then the compute:
    # every load first, then the compute (stage 1: one K-step behind), then every store
    sch.annotate(k_outer, "software_pipeline_stage", [0] * (2 * n) + [1])
    sch.annotate(k_outer, "software_pipeline_order", [p for i in range(n) for p in (i, n + 1 + i)] + [n])


class DotProducts(dl.cpu.base.CPUScheduleRule):
    """CPU: every output a dot product along the rows' contiguous axis, `lanes` products at a time.

    For a kernel whose one reduction block is out[s...] = sum_k a[..., k] * b[..., k] with k the innermost
    axis of every operand -- the linears as W is stored ([out, in]: x @ W.T), lm_head, and the attention's
    q . k -- in prefill (a matmul) and decode (a GEMV) alike:

        k split into (ko, ki) with ki `lanes` wide, and rfactor'd: part[s..., ki] = sum_ko a[.., ko, ki] b[.., ko, ki]
        the part's loops: tiles of `rows` x `cols` outputs, parallel; ko; the tile; ki vectorized
        out[s...] = sum_ki part[s..., ki]      (the block as written, over 16 values, in the tile)

    so each vector load reads `lanes` neighbouring floats of a row and each FMA adds `lanes` products, the
    outputs of a tile sharing their rows' loads. A tile side is cut to a power of two that divides its loop
    (_whole_tile): 1 row for prefill's symbolic n (and there the column tiles go outside the rows, so that a
    tile's rows of W are read from memory once: _rows_inside; with row_pairs, n padded to an even count and
    tiles 2 rows high), 1 column for lm_head's 50257. DLight's CPU GEMV (TVM 0.27,
    dlight/cpu/gemv.py) vectorizes the *output* axis instead: with W stored [out, in] its 64-128 lanes are rows `in` apart, a
    gather each; and its CPU Reduction gives prefill's linears one scalar dot product an output. (Either
    would suit W stored [in, out], the layout tinygpt2 keeps for DLight's GPU GEMV.) Epilogues (bias, GELU,
    residual) stay plain loops. Declines kernels whose reduction is not over every operand's last axis
    (attn_values: the keys are V's rows), or not a multiple of `lanes` long."""

    def __init__(self, lanes: int = 16, rows: int = 4, cols: int = 8, row_pairs: bool = True):
        super().__init__()
        self.lanes, self.rows, self.cols, self.row_pairs = lanes, rows, cols, row_pairs

    def apply(self, func, target, _):
        nest = _reduction_nest(self, func, target)
        if nest is None:
            return None
        sch, block, loops, stmt, kinds = nest
        if kinds[-1] != tirx.IterVar.CommReduce or kinds.count(tirx.IterVar.CommReduce) != 1:
            return None
        k = stmt.iter_vars[-1]
        extent = sch.get(loops[-1]).extent
        if not isinstance(extent, tirx.IntImm) or int(extent) % self.lanes:
            return None

        def uses_k(expr) -> bool:
            return any(v.same_as(k.var) for v in dl.analysis.collect_vars_used_in_prim_expr(expr))

        operands = 0
        for region in stmt.reads:          # an operand: k in its last index only, stride 1; others (pos) without k
            if region.source.same_as(stmt.writes[0].source) or not any(uses_k(r.min) for r in region.region):
                continue
            last = region.region[-1]
            if not (isinstance(last.extent, tirx.IntImm) and int(last.extent) == 1):
                return None
            if uses_k(simplify(last.min - k.var)) or any(uses_k(r.min) for r in region.region[:-1]):
                return None
            operands += 1
        if operands < 2:
            return None
        # prefill's linears (_rows_inside): n symbolic, the output's columns fixed
        pairs = self.row_pairs and len(loops) == 3 and not isinstance(sch.get(loops[0]).extent, tirx.IntImm) \
            and isinstance(sch.get(loops[1]).extent, tirx.IntImm)
        if pairs:
            sch.pad_einsum(block, [2, 1, 1])       # n -> an even row count (x and y padded): see _rows_inside
            loops = sch.get_loops(block)
        ko, ki = sch.split(loops[-1], [None, self.lanes])
        part = sch.rfactor(ki, len(stmt.writes[0].source.shape))     # the lanes innermost in the part buffer
        *spatial, ko, ki = sch.get_loops(part)
        rows = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0] if len(spatial) == 2 else None
        if rows is not None and not isinstance(sch.get(rows).extent, tirx.IntImm):
            if isinstance(sch.get(spatial[-1]).extent, tirx.IntImm):
                return self._rows_inside(sch, block, part, rows, spatial[-1], ko, ki, pairs)
            return self._keys_inside(sch, block, part, rows, spatial[-1], ko, ki)
        tiles = [sch.split(loop, [None, _whole_tile(sch.get(loop).extent, want)])
                 for loop, want in ((rows, self.rows), (spatial[-1], self.cols)) if loop is not None]
        sch.reorder(*(outer for outer, _ in tiles), ko, *(inner for _, inner in tiles), ki)
        outer = sch.fuse(*(outer for outer, _ in tiles))
        sch.vectorize(ki)
        sch.parallel(outer)
        # the 16 lanes summed in the tile too: the part buffer then shrinks to a tile's (TVM compacts it)
        # instead of 16 floats for every output written out and read back (1.4x on prefill's c_fc)
        sch.reverse_compute_at(block, outer)
        sch.decompose_reduction(part, ko)
        return sch

    def _rows_inside(self, sch, block, part, rows, cols, ko, ki, pairs: bool):
        """Prefill's linears, whose row count n is symbolic: without row_pairs a tile of `cols` outputs is 1 row
        high (a taller one would leave a bounds test in the vectorized loop), so the order of the tiles is what
        decides the traffic.
        Rows outside columns, as above, stream all of W from memory for every row (c_fc: 9.4 MB a row). Here the
        column tiles are the parallel loop and each walks every row with its `cols` rows of W in cache (24 KB
        for c_fc), x's rows coming from L2:

            col tiles (parallel); row (n); ko; the tile's cols; ki vectorized;  then out[row, tile] = sum_ki part

        With row_pairs (the default), apply() first pads n to an even count (`pad_einsum`: x copied into an
        even-rowed buffer, the result copied back), and a tile is 2 rows x cols / 2 columns: each vector of W
        loaded serves two rows. Its 2 x 4 x 16 partial sums (512 bytes) then live in registers; a 2 x 8 tile's
        (1 KiB) went to TVM's workspace pool instead (TVM puts allocations of 1 KiB and more there, not on the
        stack), and the model got slower (prefill@512 ~550 -> ~345 tok/s). 2 x 4, back to back on the 2-core
        Xeon: prefill@128 641 -> 776-810 tok/s, @512 582 -> 607-626, time to first token 200 -> 156-159 ms.

        On the 2-core machine (Xeon, AVX-512), n = 128: a [128, 768] x [3072, 768]^T linear 17.7 -> 3.7-4.3 ms
        (34 -> 141-162 GFLOP/s); a tile of 4 / 16 / 32 columns: 139 / 109 / 96 GFLOP/s. Tried and not kept: K in
        blocks of 768 for the MLP's c_proj (K = 3072), so that W's part in use stays 24 KB -- faster alone (4.7
        against 6.0 ms) but slower in the model (prefill@128 494 against 550 tok/s): its partial sums, n x N x 16
        floats, go round memory once per block; and the epilogue (bias, GELU, residual) moved into the tiles:
        474 tok/s."""
        co, ci = sch.split(cols, [None, _whole_tile(sch.get(cols).extent, self.cols // 2 if pairs else self.cols)])
        if pairs:                   # apply() padded n to an even count: tiles of 2 rows, no bounds test
            ro, ri = sch.split(rows, [None, 2])
            sch.reorder(co, ro, ko, ri, ci, ki)
        else:
            ro = rows
            sch.reorder(co, rows, ko, ci, ki)
        sch.vectorize(ki)
        sch.parallel(co)
        sch.reverse_compute_at(block, ro)
        sch.decompose_reduction(part, ko)
        return sch

    @staticmethod
    def _keys_inside(sch, block, part, rows, keys, ko, ki):
        """Prefill's q . k (attn_scores): rows (head, query) and keys j both symbolic, so both tiles would be 1 wide,
        and fused into one parallel loop they cost two 64-bit divisions by symbolic extents an output. Here the
        rows are the parallel loop and the keys a plain loop inside it:

            (head, query) (parallel); j; ko; ki vectorized;  then scores[h, i, j] = sum_ki part

        On the 2-core machine, gpt2's scores at n = m = 512: 20.3 -> 11.3 ms (20 -> 36 GFLOP/s)."""
        sch.reorder(rows, keys, ko, ki)
        sch.vectorize(ki)
        sch.parallel(rows)
        sch.reverse_compute_at(block, keys)
        sch.decompose_reduction(part, ko)
        return sch


class WeightedRows(dl.cpu.base.CPUScheduleRule):
    """CPU: each output row a weighted sum of the operand's rows, out[s..., d] = sum_j a[.., j] * b[.., j, d], the
    row (d, contiguous in b and in out) one vector: attention's p . V, whose keys j are V's rows.

        the loops: (s... but d) parallel; j; d vectorized      (the row's partial sums stay in registers)

    DLight's CPU Reduction runs one scalar reduction over j per output, reading V a row apart each step (decode's
    attn_values: 7.5 ms of a 36 ms step on the 2-core machine). Declines kernels whose reduction is not the last
    loop, or whose innermost spatial axis is not the last axis of the output and of the operand it indexes."""

    def apply(self, func, target, _):
        nest = _reduction_nest(self, func, target)
        if nest is None:
            return None
        sch, block, loops, stmt, kinds = nest
        if (len(loops) < 2 or kinds[-1] != tirx.IterVar.CommReduce
                or kinds[:-1] != [tirx.IterVar.DataPar] * (len(kinds) - 1)):
            return None
        d = stmt.iter_vars[-2].var
        extent = sch.get(loops[-2]).extent
        if not isinstance(extent, tirx.IntImm) or int(extent) > 256:
            return None

        def uses_d(expr) -> bool:
            return any(v.same_as(d) for v in dl.analysis.collect_vars_used_in_prim_expr(expr))

        out = stmt.writes[0].region
        rows = [r for r in stmt.reads if any(uses_d(x.min) for x in r.region)]
        if not rows or not all(uses_d(x[-1].min) and not uses_d(simplify(x[-1].min - d)) and not any(
                uses_d(y.min) for y in x[:-1]) for x in [out, *(r.region for r in rows)]):
            return None
        *spatial, d_loop, j_loop = loops
        sch.reorder(j_loop, d_loop)
        if spatial:
            sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        sch.vectorize(d_loop)
        sch.decompose_reduction(block, j_loop)
        return sch


def _reduction_blocks(sch) -> tuple[list, list]:
    """(every block under the kernel's root, those of them with a reduction axis)."""
    blocks = sch.get_child_blocks(dl.analysis.get_root_block(sch))
    return blocks, [b for b in blocks if any(v.iter_type == tirx.IterVar.CommReduce for v in sch.get(b).iter_vars)]


def _reduction_nest(rule, func, target):
    """For DotProducts and WeightedRows: (schedule, block, its loops, the block, its iter kinds) of a CPU kernel
    whose one reduction block is its first (the rest: epilogues), the loops one per block axis; else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = tvm.s_tir.Schedule(func)
    blocks, reducing = _reduction_blocks(sch)
    if len(reducing) != 1 or not reducing[0].same_as(blocks[0]):
        return None
    block = reducing[0]
    loops, stmt = sch.get_loops(block), sch.get(block)
    kinds = [v.iter_type for v in stmt.iter_vars]
    return None if len(loops) != len(kinds) else (sch, block, loops, stmt, kinds)


def _whole_tile(extent, want: int) -> int:
    """The largest power of two <= want that divides `extent`; 1 for a symbolic extent. A tile that does not divide
    its loop leaves a bounds test in the vectorized loop (T.where), which halved the FMA rate (c_fc at 128 tokens:
    66 GFLOP/s with 128 fixed, 33 symbolic, 2-core machine)."""
    if not isinstance(extent, tirx.IntImm):
        return 1
    tile = want
    while int(extent) % tile:
        tile //= 2
    return tile


class RowReduction(dl.cpu.Reduction):
    """DLight's CPU Reduction rule, declining kernels whose reductions each produce one value (decode's layernorm:
    one row's sum and sum of squares).

    For such a kernel the rule parallelizes the epilogue's elements and computes the reductions at each of them
    (TVM 0.27, dlight/cpu/reduction.py): decode's layernorm sums its 768 inputs twice for each of its 768
    outputs, O(C^2), ~1.1 ms a call where plain loops take microseconds. Declined, the kernel keeps its
    plain loops. Kernels that reduce many rows (prefill's layernorm, the softmax, attn_values) are the rule's."""

    def apply(self, func, target, tunable):
        if isinstance(func, tirx.PrimFunc):
            sch = tvm.s_tir.Schedule(func)
            blocks, reducing = _reduction_blocks(sch)
            if reducing and len(blocks) > len(reducing) and all(
                    all(isinstance(v.dom.extent, tirx.IntImm) and int(v.dom.extent) == 1
                        for v in sch.get(b).iter_vars if v.iter_type == tirx.IterVar.DataPar) for b in reducing):
                return None
        return super().apply(func, target, tunable)


def hand_kernels(rule_list, target_kind: str = "gpu") -> tuple[str, ...]:
    """The hand-scheduled kernels a rule list asks for (model.build_module's `hand`); on the CPU only those
    of CPU_RULES (hand-softmax, flash-prefill), whatever objects the list holds."""
    names = tuple(name for name in ("fused-decode", "decode-cluster", "attention-cluster", "attention-proj",
                                    "side-prefetch", "pipe-decode", "hand-softmax", "flash-prefill",
                                    "flash-prefill-mma", "matmul-mma", "matmul-wgmma")
                  if any(isinstance(r, GPU_RULES[name]) for r in rule_list))
    if target_kind == "cpu":
        return tuple(name for name in names if name in CPU_RULES)
    # the PDL entries are one rule in three modes (subclasses); should a list name several, the first
    # of PDL_RULES wins
    modes = {r.mode for r in rule_list if isinstance(r, PDLDecode)}
    return names + tuple(name for name, mode in PDL_RULES.items() if mode in modes)[:1]


# rule name -> class, per kind of target
GPU_RULES = {
    "matmul": dl.gpu.Matmul,
    "tiled-matmul": TiledMatmul,                 # ours: DLight's Matmul, float32, tiles K-major, prefetched (above)
    "gemv": dl.gpu.GEMV,
    "small-block-gemv": SmallBlockGEMV,          # ours: DLight's GEMV, at most 128 threads a block (above)
    "low-batch-gemv": dl.gpu.LowBatchGEMV,
    "reduction": dl.gpu.Reduction,
    "general-reduction": dl.gpu.GeneralReduction,
    "rmsnorm": dl.gpu.RMSNorm,
    "transpose": dl.gpu.Transpose,
    "fallback": dl.gpu.Fallback,
    "tensor-core-matmul": TensorCoreMatmul,      # ours: DLight's WMMA schedule, also for attention (64)
    "tensor-core-matmul-async": PipelinedTensorCoreMatmul,  # ours: the same, tiles streamed by cp.async, 3 stages
    "fused-decode": FusedDecode,                 # ours: decode's hand-scheduled fused kernels (above)
    "pdl-decode": PDLDecode,                     # ours: ... launched with programmatic dependent launch (above)
    "pdl-decode-loaded": PDLDecodeLoaded,
    "pdl-decode-early": PDLDecodeEarly,
    "decode-cluster": DecodeCluster,             # ours: ln_1 + c_attn + attention, a cluster per head (above)
    "attention-cluster": AttentionCluster,       # ours: the attention alone, a cluster per head (above)
    "attention-proj": AttentionProj,             # ours: ... with the attention's c_proj in it (above)
    "side-prefetch": SidePrefetch,               # ours: decode's weights into L2 from a second stream (above)
    "pipe-decode": PipeDecode,                   # ours: decode's linears as persistent pipelined grids (above)
    "hand-softmax": HandSoftmax,                 # ours: prefill's hand-scheduled causal softmax (above)
    "flash-prefill": FlashPrefill,               # ours: prefill's attention as one hand-scheduled kernel (above)
    "flash-prefill-mma": FlashPrefillMma,        # ours: ... on mma.sync, FA2's layout (above)
    "matmul-mma": MatmulMma,                     # ours: prefill's linears written on mma.sync (above)
    "matmul-wgmma": MatmulWgmma,                 # ours: ... on Hopper's wgmma (above)
}
# rule name -> kernels/_pdl.py's mode
PDL_RULES = {name: cls.mode for name, cls in GPU_RULES.items() if issubclass(cls, PDLDecode)}
# entries that change another entry's kernels for CUDA sm_90+ (fused-decode's: the PDL ones, the cluster ones and
# pipe-decode; flash-prefill's: flash-prefill-mma) or replace kernels in place (matmul-mma, matmul-wgmma): they do
# nothing alone (so presets() has no list of one of them alone), and compile.hand_kernels drops them where the
# target cannot run them (matmul-wgmma off sm_90a as well: targets.supports_wgmma)
SM90_REQUESTS = {*PDL_RULES, "decode-cluster", "attention-cluster", "attention-proj", "side-prefetch",
                 "pipe-decode", "flash-prefill-mma", "matmul-mma", "matmul-wgmma"}
CPU_RULES = {
    "dot-products": DotProducts,                 # ours: vectorized along the rows (above)
    "weighted-rows": WeightedRows,               # ours: p . V, a row of V a vector (above)
    "gemv": dl.cpu.GEMV,
    "reduction": dl.cpu.Reduction,
    "row-reduction": RowReduction,               # ours: DLight's Reduction, but not for one-row reductions (above)
    "hand-softmax": HandSoftmax,                 # ours: prefill's hand-scheduled causal softmax, CPU (above)
    "flash-prefill": FlashPrefill,               # ours: prefill's attention as one hand-scheduled kernel, CPU (above)
}

# The list TVM itself applies for CUDA in tvm.compile (relax/backend/cuda/pipeline.py).
GPU_DEFAULT = ["matmul", "gemv", "reduction", "general-reduction", "fallback"]
CPU_DEFAULT = ["gemv", "reduction"]
# ours, for the CPU: prefill's attention as one hand-scheduled kernel (FlashPrefill: keys past the diagonal never
# visited), or without it its hand-scheduled softmax (HandSoftmax; gpt2's at 512 tokens 8.6 -> 2.1 ms a layer on
# the 2-core machine), dot-products (DotProducts) for every kernel whose reduction runs along its operands'
# rows (the linears, lm_head, q.k), DLight's rules for the rest
CPU_TUNED = ["flash-prefill", "hand-softmax", "dot-products", "weighted-rows", "gemv", "row-reduction"]
# ours, for prefill: DLight's list with tensor-core-matmul-async and tensor-core-matmul first
# (tinygpt2/tensor_core.py says what they change: the first, 8 warps of 64 x 32 a tile and cp.async, took
# gpt2-xl's 1024-token prefill from 40.8k to 47.5k tok/s on an H200; the second takes what the first
# does not, sm_70-75), the hand-scheduled causal softmax (HandSoftmax; gpt2-xl's 1024-token softmax 6.8 -> 3.3 ms
# on an H200) and, taking the place of both for attention, flash-prefill (FlashPrefill; gpt2-xl's
# 1024-token attention 13.1 -> 4.5 ms, prefill 29.7k -> 40.2k tok/s on an H200): docs/results/README.md
# tiled-matmul: float32's matmuls on a 64 x 64 tile stored K-major in shared memory, the next K-step of 32 loaded
# into registers during this one (TiledMatmul; gpt2-xl's fp32 prefill@1024 4.1k -> 6.9k tok/s on an H200 K-major,
# 8.0k with the prefetch and the flash kernel's padded rows; docs/results/bench_matmul_fp32_h200.md)
GPU_TUNED = ["flash-prefill", "hand-softmax", "tensor-core-matmul-async", "tensor-core-matmul", "tiled-matmul",
             *GPU_DEFAULT]
# ... and for decode, its hand-scheduled fused kernels (FusedDecode) and small-block-gemv before gemv (for
# the GEMVs left to DLight): on an H200 gpt2 fp16 decodes at 4051 tok/s with this list (2864 with the
# default one, a day earlier), gpt2-xl at 609 (493); with pdl-decode (their launches overlapped, sm_90+)
# 4191 and 621; with the layernorms folded into the weights (fused-decode's, weights.fold_layernorms) 4394
# and 685 (docs/results/README.md); with attention-cluster (sm_90+, fp16) gpt2-xl's step 1404 -> 1292 us, gpt2's
# 209 -> 189 (H200), and on an H100 gpt2-xl decodes at 631 tok/s instead of 597, gpt2 at 4612 instead of 4393
# flash-prefill-mma (sm_90+, fp16, heads 64 wide) puts flash-prefill's attention on mma.sync: gpt2-xl's 1024-token
# attention 4.0 -> 1.5 ms (48 layers), prefill@1024 49.1k -> 57.3k tok/s, back to back on an H100
# (docs/results/cuda_flash_mma_h100.md); matmul-wgmma (sm_90a, fp16) puts prefill's four linears on Hopper's wgmma:
# gpt2-xl's at 1024 tokens 14.8 -> 8.6 ms (48 layers; cuBLAS 6.7), prefill@1024 56.3k -> 86.6k tok/s, back to back
# on an H100 (docs/results/bench_matmul_wgmma_h100.md); pipe-decode (sm_90+, the linears where a block gets 3
# groups of rows or more: gpt2-xl's qkv and MLP c_proj) takes gpt2-xl fp16's decode from 661 to 677 tok/s, back to
# back on an H100 (docs/results/pipe_decode_h100.md)
GPU_FUSED = ["matmul-wgmma", "fused-decode", "pdl-decode", "pipe-decode", "attention-cluster", "flash-prefill-mma",
             "flash-prefill", "hand-softmax", "tensor-core-matmul-async", "tensor-core-matmul", "tiled-matmul",
             "matmul", "small-block-gemv", "gemv", "reduction", "general-reduction", "fallback"]
# What runs when no list is asked for (generate, step, bench, tinygpt2.load): the fastest list measured per
# target kind. On the CPU `tuned`: random:gpt2 fp32 decode 5 -> 38 tok/s (docs/rules.md), and DLight's CPU GEMV
# makes `default` slow to build as well (each of its 128-lane gathers unrolled 192-256 times: shakespeare's
# three decode linears with an epilogue take 14-51 s each in LLVM, 86 s a compile against 0.8 s for `tuned`,
# 2-core machine, 2026-12-05). On a GPU `fused`: back to back on one H200, gpt2 fp16 decoded at 2914 tok/s with `default`
# and 4079 with it (docs/results/cuda_gpt2_h200_default_vs_fused_rerun.md), and it has gained since; on WebGPU
# measured only on llvmpipe, where it was no slower. `default` stays DLight's own list, which `explain` and
# `ablate` start from.
AUTO = {"cpu": "tuned", "gpu": "fused"}


def presets(target_kind: str) -> dict[str, list[str]]:
    """Named rule lists for a target kind ("cpu" or "gpu").

    none     -- GPU: only `fallback`, the least scheduling that lets a kernel run on a GPU at all
                (spatial loops fused and bound to blocks/threads, reductions left serial);
                CPU: no rule (plain loops, compiled as they are written).
    default  -- what TVM applies by default.
    auto     -- the fastest list measured for the kind (AUTO above): tuned on the CPU, fused on a GPU.
                What generate, step, bench and tinygpt2.load use unless told otherwise.
    tuned    -- GPU, for prefill: default with tinygpt2's flash-prefill (attention as one kernel,
                the scores never in memory, WMMA on CUDA in fp16), tensor-core-matmul-async
                (WMMA with larger warp tiles and cp.async, sm_80+) and tensor-core-matmul before it
                (the linears on tensor cores; and attention's q.k^T and p.v, where DLight keeps them on
                CUDA cores, when flash-prefill is taken out), hand-softmax (the causal softmax
                hand-scheduled, each score read once, likewise without flash-prefill) and tiled-matmul
                (float32 matmuls on CUDA cores with their tiles K-major in shared memory, 64 x 64,
                the next K-step loaded into registers during this one).
    tuned    -- CPU: tinygpt2's flash-prefill (prefill's attention as one kernel, a query row a task,
                the keys past the diagonal never read), hand-softmax (without flash-prefill, the causal
                softmax hand-scheduled: whole vectors and a scalar rest, exp as arithmetic), dot-products
                (linears, lm_head, q.k vectorised along their rows) and weighted-rows (p.V, a row of V a
                vector) before DLight's GEMV, and row-reduction (DLight's Reduction minus one-row
                reductions).
    fused    -- GPU: tuned with fused-decode (decode's attention split over chunks of keys, ln +
                linear, the MLP's c_proj + residual and greedy's argmax + advance, as hand-scheduled
                kernels), pdl-decode (those launched with programmatic dependent launch, CUDA sm_90+),
                pipe-decode (gpt2-xl's qkv and MLP c_proj persistent pipelined grids, CUDA sm_90+),
                attention-cluster (decode's attention one kernel, a thread-block cluster per head; CUDA
                sm_90+, fp16) and small-block-gemv before gemv: the fastest list measured, prefill and decode.
    <rule>   -- that rule alone (+ fallback on GPU, so the kernels it does not match still run); not
                the pdl-decode entries, decode-cluster, attention-cluster and pipe-decode, which need
                fused-decode (nor the others of SM90_REQUESTS).
    default-minus-<rule> -- the default list without that rule.
    """
    if target_kind == "cpu":
        out = {"none": [], "default": list(CPU_DEFAULT), "tuned": list(CPU_TUNED)}
        out["auto"] = list(out[AUTO["cpu"]])
        out.update({name: [name] for name in CPU_RULES})
        out.update({f"default-minus-{name}": [r for r in CPU_DEFAULT if r != name] for name in CPU_DEFAULT})
        return out
    out = {"none": ["fallback"], "default": list(GPU_DEFAULT), "tuned": list(GPU_TUNED), "fused": list(GPU_FUSED)}
    out["auto"] = list(out[AUTO["gpu"]])
    # each rule alone; not the SM90_REQUESTS entries (alone they would do nothing, or leave the rest unscheduled)
    out.update({name: [name, "fallback"] for name in GPU_RULES
                if name != "fallback" and name not in SM90_REQUESTS})
    out.update({f"default-minus-{name}": [r for r in GPU_DEFAULT if r != name] for name in GPU_DEFAULT
                if name != "fallback"})
    return out


def _load_attr(spec: str):
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise RuleError(f"cannot load rules from {spec!r}: {e}") from None
    return obj() if isinstance(obj, type) else obj


def resolve(rules, target_kind: str) -> list:
    """Any accepted form of a rule list -> a list of DLight ScheduleRule objects."""
    table = CPU_RULES if target_kind == "cpu" else GPU_RULES
    if rules is None:
        rules = "default"
    if isinstance(rules, str):
        if ":" in rules:
            obj = _load_attr(rules)
            if not isinstance(obj, (str, Sequence, dl.ScheduleRule)):
                raise RuleError(f"{rules!r} is a {type(obj).__name__}, not a rule list: module:attr must name a "
                                "ScheduleRule, a list of them, or a preset name")
            return resolve(obj, target_kind)
        named = presets(target_kind)
        if rules in named:
            rules = named[rules]
        else:
            rules = [r.strip() for r in rules.split(",") if r.strip()]
    elif isinstance(rules, dl.ScheduleRule):
        rules = [rules]
    if not isinstance(rules, Sequence):
        raise RuleError(f"a rule list must be a preset name, names or ScheduleRule objects, not {type(rules).__name__}")
    out = []
    for r in rules:
        if isinstance(r, dl.ScheduleRule):
            out.append(r)
        elif isinstance(r, str) and r in table:
            out.append(table[r]())
        elif isinstance(r, str) and len(rules) > 1 and r in presets(target_kind):
            raise RuleError(f"{r!r} is a preset (a whole rule list), not a rule: give it alone, or list rules from "
                            f"{', '.join(table)}")
        elif isinstance(r, str):
            choices = ", ".join(sorted(set(table) | set(presets(target_kind))))
            raise RuleError(f"unknown rule or preset {r!r} for a {target_kind.upper()} target; choose from {choices}")
        else:
            raise RuleError(f"not a DLight rule: {r!r}")
    return out


def rule_name(rule) -> str:
    """A short, stable name for a rule object (its registry name when it is one of DLight's)."""
    for table in (GPU_RULES, CPU_RULES):
        for name, cls in table.items():
            if type(rule) is cls:
                return name if table is GPU_RULES else f"cpu-{name}"
    return f"{type(rule).__module__}.{type(rule).__qualname__}"


def describe(rules) -> list[str]:
    """Names and parameters of a resolved list: part of the compile cache key."""
    out = []
    for r in rules:
        params = {k: v for k, v in sorted(vars(r).items()) if not k.startswith("_")}
        out.append(rule_name(r) + (repr(params) if params else ""))
    return out
