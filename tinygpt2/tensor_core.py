"""`tensor-core-matmul`: DLight's WMMA tensor-core matmul schedule, for the matmuls DLight skips.

DLight's `gpu.Matmul` hands an fp16 matmul to `MatmulTensorization` only when none of its fixed
extents I, J, K is 64 or less (and, before tvm_shim.py's fix, never on "sm_90a"). In GPT-2 that
leaves attention on CUDA cores: q.k^T reduces over the head dimension (K = 64) and p.v produces it
(N = 64). At a 1024-token prefill each is 25 heads x 1024 x 1024 x 64 multiply-adds per layer
(gpt2-xl), and together with the softmax they were 60% of gpt2's prefill kernel time at n = 1024.

This rule changes only that gate: it hands a matmul to DLight's own `MatmulTensorization`
(matmul.py in tvm/s_tir/dlight/gpu), whose schedule is

    thread block  = 4 x 4 warps, each 2 x 2 WMMA fragments of 16 x 16   -> a 128 x 128 tile of C
    K             = steps of 4 x 16 = 64, staged through shared memory (double-buffered, pipelined)
    every extent padded to whole tiles (n and the key length m are symbolic in prefill)

taking any matmul whose two inputs are fp16, accumulated in fp32, with every fixed extent at least
one fragment (16). Kernels it does not take (fp32 models, decode's n = 1 GEMVs and attention, whose
probabilities are fp32) fall through to the next rule of the list.

MatmulTensorization's tile is fixed, and in TVM 0.27 another one fails to lower through it ("tvm_access_ptr
element type must match the source buffer", float16 vs float32 shared memory). `tensor-core-matmul-async`
(PipelinedTensorCoreMatmul, below) is the same schedule with the tile, the warps and the pipeline as knobs;
its default, 8 warps of 64 x 32 instead of 16 of 32 x 32, took gpt2-xl's four prefill linears from 17.5 to
14.6 ms at n = 1024 on an H200 (cuBLAS: 7.2; docs/results/bench_matmul_h200.md).
"""

from __future__ import annotations

from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import dl, tirx, tvm, wmma_intrin_group

_M = dl.gpu.matmul                      # DLight's matmul module: its analysis helpers and its WMMA schedule
MIN_EXTENT = 16                         # one WMMA fragment: a smaller fixed extent stays on CUDA cores
FRAG = 16                               # WMMA's fragment: 16 x 16 x 16 (fp16 in, fp32 accumulate)
WARP = 32
COPY_LANES = 8                          # fp16 elements a thread copies at once: 16 bytes, cp.async's widest
STATIC_SHARED_BYTES = 48 * 1024         # CUDA's limit on a kernel's static shared memory
K_STEP = 64                             # K per pipeline stage: 4 fragments (DLight's)


class TensorCoreMatmul(_M.GPUScheduleRule):
    """fp16 x fp16 -> fp32 matmuls on tensor cores (WMMA), head-dimension-sized extents included."""

    min_sm = 70                                           # WMMA

    def takes(self, func, target) -> bool:
        """Whether func is a matmul this rule schedules (the gate; see the module docstring)."""
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return False
        if target.kind.name != "cuda" or _M.check_sm_version(str(target.attrs.get("arch", ""))) < self.min_sm:
            return False
        sch = tvm.s_tir.Schedule(func)
        reduction_blocks = _M.get_reduction_blocks(sch, sch.get_child_blocks(_M.get_root_block(sch)))
        if reduction_blocks is None:
            return False
        stmt = sch.get(reduction_blocks[0])
        index_maps = _M.get_index_map(stmt)
        if index_maps is None:                           # not a matmul (decode's n = 1 GEMVs included)
            return False
        # both inputs fp16 (the Cast to float32 accumulation is what the WMMA f16f16f32 intrinsic does)
        reads = [r.source.dtype for r in stmt.reads if r.source.dtype != stmt.writes[0].source.dtype]
        if stmt.writes[0].source.dtype != "float32" or len(reads) != 2 or set(reads) != {"float16"}:
            return False
        # the extents as C[S, I, J] += A[S, I, K] * B[S, J, K]: DLight's gate is "all of I, J, K > 64"
        extents = index_maps[0].map_shape([iv.dom.extent for iv in stmt.iter_vars])
        return not any(isinstance(e, tirx.IntImm) and int(e) < MIN_EXTENT for e in extents[1:])

    def apply(self, func, target, _):
        return _M.MatmulTensorization().apply(func, target, _) if self.takes(func, target) else None


class PipelinedTensorCoreMatmul(TensorCoreMatmul):
    """`tensor-core-matmul-async`: the same WMMA matmul, its tiles streamed by cp.async through a deeper
    pipeline (sm_80+), with the tile shape a knob. Takes the kernels TensorCoreMatmul takes.

    DLight's MatmulTensorization copies each K-step of A and B from global memory into registers, then
    into shared memory (`tirx.manifest_shared_memory_local_stage`), double-buffered: every thread spends
    registers and instructions on the copy, and a K-step's loads are only one step ahead of the math.
    Here the copies go global -> shared with `cp.async` (16 bytes a thread, no registers; rows past n
    are zero-filled by the predicated form), and InjectSoftwarePipeline keeps `stages - 1` K-steps in
    flight while the tensor cores work on the oldest (stages x the tile in shared memory). The loop
    annotations are those of TVM's MetaSchedule for its MMA tensor-core schedule (multi_level_tiling_
    tensor_core.cc, `use_async`): five statements in a K-step after the inner pipeline,

        A -> shared, B -> shared (async, stage 0)   fragments of step k (stage S-2)   mma of step k (S-1, S-1)

    The `tirx.use_async_copy` pass option (compile.tir_pass_context sets it for CUDA) is what turns the
    copies into cp.async. Arguments: the tile of C a thread block computes (`tile` = (rows, cols)), its
    warps (`warps` = (along rows, along cols); each warp then owns (rows / warps[0]) x (cols / warps[1])
    of C in 16 x 16 fragments) and `stages`; a K-step is 64 (32 did not compile).

    Measured on an H200, gpt2-xl's four linears at n = 1024 (scripts/bench_matmul.py; per layer, x 48):
        DLight's schedule (16 warps of 32 x 32, registers-staged, 2 stages)   17.5 ms
        the same tile and warps, cp.async, 3 stages                           17.7 ms
        8 warps of 64 x 32 (the default), cp.async, 3 stages                  14.6 ms
        4 warps of 64 x 64: 14.9, 8 of 32 x 64: 15.3, 128 x 256 or 256 x 128 tiles: 19.0, 128 x 64: 15.9
        cuBLAS (torch's F.linear)                                              7.2 ms
    so the copies were not what held DLight's schedule back: each warp's fragment loads from shared
    memory are. A warp of 32 x 32 loads 2 + 2 fragments for 4 mma_syncs, one of 64 x 32 4 + 2 for 8.
    With 2 stages the pipeline read tiles before their copies landed (NaNs): `stages` is 3 or more, and
    4 fails to lower (the float32 tile again).
    """

    def __init__(self, tile=(128, 128), warps=(2, 4), stages: int = 3):
        super().__init__()
        rows, cols = tile
        if stages < 3 or rows % (warps[0] * FRAG) or cols % (warps[1] * FRAG):
            raise RuleError(f"tensor-core-matmul-async: stages must be >= 3 and each warp's share of the tile "
                            f"a whole number of 16 x 16 fragments (tile {tile}, warps {warps}, stages {stages})")
        self.tile, self.warps, self.stages = tuple(tile), tuple(warps), stages

    min_sm = 80                                           # cp.async

    def apply(self, func, target, _):
        return schedule_pipelined(func, self.tile, self.warps, self.stages) if self.takes(func, target) else None


def schedule_pipelined(func, tile, warps, stages):
    """DLight's MatmulTensorization (tvm/s_tir/dlight/gpu/matmul.py), steps 1-3 and its tensorization
    unchanged, with the global -> shared copies and the K loop's pipeline replaced (see above)."""
    rows, cols = tile
    wr, wc = warps
    fr, fc, fk = rows // (wr * FRAG), cols // (wc * FRAG), K_STEP // FRAG    # fragments a warp holds
    sch = tvm.s_tir.Schedule(func)
    main = _M.get_reduction_blocks(sch, sch.get_child_blocks(_M.get_root_block(sch)))[0]
    # 1. normalize to C[S, I, J] += A[S, I, K] * B[S, J, K], and pad I, J, K to whole tiles (n is symbolic)
    reindex = [sch.reindex(main, ("read", 0)), sch.reindex(main, ("read", 1)), sch.reindex(main, ("write", 0))]
    matmul_map, a_map, b_map, c_map = _M.get_index_map(sch.get(main))
    sch.transform_layout(reindex[0], ("write", 0), a_map)
    sch.transform_layout(reindex[1], ("write", 0), b_map)
    sch.transform_layout(reindex[2], ("read", 0), c_map)
    sch.transform_block_layout(main, matmul_map)
    sch.pad_einsum(main, [1, rows, cols, K_STEP])
    # 2. 16 x 16 x 16 fragments, then the grid: blocks of rows x cols, wr x wc warps, fr x fc fragments each
    batch, i, j, k = sch.get_loops(main)
    i, i_frag = sch.split(i, [None, FRAG])
    j, j_frag = sch.split(j, [None, FRAG])
    k, k_frag = sch.split(k, [None, FRAG])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    mma = main
    tile_block = sch.blockize(i_frag)
    i0, i1, i2, i3 = sch.split(i, [None, 1, wr, fr])
    j0, j1, j2, j3 = sch.split(j, [1, None, wc, fc])
    k0, k1 = sch.split(k, [None, fk])                                  # k0: K-steps, k1: fragments in one
    sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)
    warp = sch.fuse(j2, i2)
    sch.bind(batch, "blockIdx.z")
    sch.bind(sch.fuse(i0, j0), "blockIdx.x")
    sch.bind(sch.fuse(i1, j1), "blockIdx.y")
    sch.bind(warp, "threadIdx.y")

    # 3. A's and B's tiles of a K-step into shared memory, 16 bytes a thread per copy (cp.async's unit);
    # each row padded by 8 halves against bank conflicts in the fragment loads (DLight's storage_align)
    def to_shared(idx):
        copy = sch.cache_read(tile_block, idx, "shared.dyn")
        sch.compute_at(copy, k0)
        _, ty, tx, vec = sch.split(sch.fuse(*sch.get_loops(copy)[-2:]), [None, wr * wc, WARP, COPY_LANES])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        sch.storage_align(copy, 0, axis=-2, factor=16, offset=8)
        return copy

    for copy in (to_shared(0), to_shared(1)):
        _M.auto_inline_producers(sch, copy)                              # the padding, as a predicate
    a_frag = sch.cache_read(tile_block, 0, "wmma.matrix_a")
    b_frag = sch.cache_read(tile_block, 1, "wmma.matrix_b")
    sch.compute_at(a_frag, k1)
    sch.compute_at(b_frag, k1)
    # C: fragments -> shared -> global (through the epilogue: bias, GELU, residual). In TVM 0.27 a
    # float32 tile in the same dynamic shared memory as the float16 ones fails to lower unless it is
    # 128 x 128 ("tvm_access_ptr element type must match the source buffer"): a smaller one goes to
    # static shared memory instead (at most 48 KB: 128 x 64 floats is 32 KB)
    c_scope = "shared.dyn" if rows * cols * 4 > STATIC_SHARED_BYTES else "shared"
    c_shared = sch.cache_write(tile_block, 0, c_scope)
    sch.storage_align(c_shared, 0, -2, 16, 4)
    c_frag = sch.cache_write(tile_block, 0, "wmma.accumulator")
    sch.reverse_compute_at(c_frag, warp)
    sch.reverse_compute_at(c_shared, warp)
    si, sj = sch.get_loops(c_frag)[-2:]
    si0, si1 = sch.split(si, [None, FRAG])
    sj0, sj1 = sch.split(sj, [None, FRAG])
    sch.reorder(si0, sj0, si1, sj1)
    init = sch.get_child_blocks(sch.decompose_reduction(tile_block, k0))[0]

    # 4. WMMA intrinsics: fragment loads, fill, mma_sync, store
    wmma = wmma_intrin_group(load_scope="shared.dyn", store_scope="shared.dyn", in_dtype="float16",
                                 out_dtype="float32", trans_b=True)
    for frag, intrin in ((a_frag, "load_a"), (b_frag, "load_b")):
        fi, fj = sch.get_loops(frag)[-2:]
        fi0, fi1 = sch.split(fi, [None, FRAG])
        fj0, fj1 = sch.split(fj, [None, FRAG])
        sch.reorder(fi0, fj0, fi1, fj1)
        sch.unroll(fi0)
        sch.unroll(fj0)
        sch.tensorize(fi1, wmma[intrin])
    sch.tensorize(sch.get_loops(init)[-2], wmma["init"])
    store = wmma_intrin_group(load_scope="shared.dyn", store_scope=c_scope, in_dtype="float16",
                                  out_dtype="float32", trans_b=True)["store"]
    sch.tensorize(sch.get_loops(c_frag)[-2], store)
    sch.tensorize(sch.get_loops(mma)[-3], wmma["compute"])
    _M.auto_inline_consumer_chain(sch, c_shared)
    _, tx, vec = sch.split(sch.fuse(*sch.get_loops(c_shared)[-2:]), [None, WARP, 4])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)

    # 5. the pipelines. Inner (k1): the next fragments load while this one's mma runs. Outer (k0): its
    # five statements (A copy, B copy, and the inner loop's prologue / body / epilogue) in stages, the
    # copies `stages - 1` K-steps ahead, async (cp.async groups, waited on before their step's fragments)
    sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
    sch.annotate(k1, "software_pipeline_order", [0, 1, 2])
    sch.annotate(k0, "software_pipeline_stage", [0, 0, stages - 2, stages - 1, stages - 1])
    sch.annotate(k0, "software_pipeline_order", [0, 1, 3, 2, 4])
    sch.annotate(k0, "software_pipeline_async_stages", [0])
    return sch
