"""`tensor-core-matmul`: DLight's WMMA tensor-core matmul schedule, for the matmuls DLight skips.

DLight's `gpu.Matmul` hands an fp16 matmul to `MatmulTensorization` only when none of its fixed
extents I, J, K is 64 or less (and, before tvm_shim.py's fix, never on "sm_90a"). In GPT-2 that
leaves attention on CUDA cores: q.k^T reduces over the head dimension (K = 64) and p.v produces it
(N = 64). At a 1024-token prefill each is 25 heads x 1024 x 1024 x 64 multiply-adds per layer
(gpt2-xl), and together with the softmax they were 60% of gpt2's prefill kernel time at n = 1024.

This rule is DLight's schedule step for step (matmul.py in tvm/s_tir/dlight/gpu, Apache-2.0):

    thread block  = 4 x 4 warps, each 2 x 2 WMMA fragments of 16 x 16   -> a 128 x 128 tile of C
    K             = steps of 4 x 16 = 64, staged through shared memory (double-buffered, pipelined)
    every extent padded to whole tiles (n and the key length m are symbolic in prefill)

taking any matmul whose two inputs are fp16, accumulated in fp32, with every fixed extent at least
one fragment (16). Kernels it does not take (fp32 models, decode's n = 1 GEMVs and attention, whose
probabilities are fp32) fall through to the next rule of the list.

Narrower tiles (128 x 64, 64 x 64, 8 warps) would give GPT-2's narrow outputs more thread blocks
(gpt2-xl's c_proj, 6400 -> 1600, gets 13 blocks for 132 SMs at n = 128), but in TVM 0.27 every
tile other than 128 x 128 fails to lower ("tvm_access_ptr element type must match the source
buffer", float16 vs float32 shared memory), so the tile is fixed here too.
"""

from __future__ import annotations

from tinygpt2.tvm_shim import dl, tirx, tvm, wmma_intrin_group

_M = dl.gpu.matmul                      # DLight's helpers (index maps, inlining), used as its rule does
MIN_EXTENT = 16                         # one WMMA fragment: a smaller fixed extent stays on CUDA cores


# the tile: warps per block (M, N), WMMA fragments per warp (M, N), K fragments per stage
WARPS_M, WARPS_N, FRAG_M, FRAG_N, K_FRAGS = 4, 4, 2, 2, 4


class TensorCoreMatmul(_M.GPUScheduleRule):
    """fp16 x fp16 -> fp32 matmuls on tensor cores (WMMA), head-dimension-sized K included."""

    def apply(self, func, target, _):     # noqa: C901 -- one schedule, in DLight's order
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if target.kind.name != "cuda" or _M.check_sm_version(str(target.attrs.get("arch", ""))) < 70:
            return None
        sch = tvm.s_tir.Schedule(func)
        reduction_blocks = _M.get_reduction_blocks(sch, sch.get_child_blocks(_M.get_root_block(sch)))
        if reduction_blocks is None:
            return None
        main_block = reduction_blocks[0]
        stmt = sch.get(main_block)
        if _M.get_index_map(stmt) is None:
            return None
        # both inputs fp16 (the Cast to float32 accumulation is what the WMMA f16f16f32 intrinsic does)
        reads = [r.source.dtype for r in stmt.reads if r.source.dtype != stmt.writes[0].source.dtype]
        if stmt.writes[0].source.dtype != "float32" or len(reads) != 2 or set(reads) != {"float16"}:
            return None

        # Step 1. Normalize to C[S, I, J] += A[S, I, K] * B[S, J, K]
        reindex_a = sch.reindex(main_block, ("read", 0))
        reindex_b = sch.reindex(main_block, ("read", 1))
        reindex_c = sch.reindex(main_block, ("write", 0))
        matmul_map, a_map, b_map, c_map = _M.get_index_map(sch.get(main_block))
        sch.transform_layout(reindex_a, ("write", 0), a_map)
        sch.transform_layout(reindex_b, ("write", 0), b_map)
        sch.transform_layout(reindex_c, ("read", 0), c_map)
        sch.transform_block_layout(main_block, matmul_map)
        extents = [iv.dom.extent for iv in sch.get(main_block).iter_vars]      # S, I, J, K
        if any(isinstance(e, tirx.IntImm) and int(e) < MIN_EXTENT for e in extents[1:]):
            return None                                  # n = 1 (decode's GEMVs): not a tensor-core shape

        # Step 2. Pad every extent to whole tiles (n is symbolic in prefill)
        sch.pad_einsum(main_block, [1, 16 * WARPS_M * FRAG_M, 16 * WARPS_N * FRAG_N, 16 * K_FRAGS])

        # Step 3. Tiles: blocks over (I, J), warps within, WMMA fragments per warp
        batch, i, j, k = sch.get_loops(main_block)
        i, i_inner = sch.split(i, factors=[None, 16])
        j, j_inner = sch.split(j, factors=[None, 16])
        k, k_inner = sch.split(k, factors=[None, 16])
        sch.reorder(i, j, k, i_inner, j_inner, k_inner)
        block_inner = main_block
        block_outer = sch.blockize(i_inner)
        i0, i1, i2, i3 = sch.split(i, factors=[None, 1, WARPS_M, FRAG_M])
        j0, j1, j2, j3 = sch.split(j, factors=[1, None, WARPS_N, FRAG_N])
        k0, k1 = sch.split(k, [None, K_FRAGS])
        # software pipeline over K: global->shared copies of the next stage overlap this stage's MMAs
        sch.annotate(k0, "software_pipeline_order", [0, 3, 1, 4, 5, 2, 6])
        sch.annotate(k0, "software_pipeline_stage", [0, 0, 0, 0, 0, 1, 1])
        sch.annotate(k1, "software_pipeline_order", [0, 1, 2])
        sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
        sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)
        sch.bind(batch, "blockIdx.z")
        sch.bind(sch.fuse(i0, j0), "blockIdx.x")
        sch.bind(sch.fuse(i1, j1), "blockIdx.y")
        thread_idy = sch.fuse(j2, i2)
        sch.bind(thread_idy, "threadIdx.y")
        num_warps = WARPS_M * WARPS_N

        def fetch_to_shared(block, idx):
            """A and B tiles into shared memory, 4-wide vector copies by all warps (rows padded by 8)."""
            read = sch.cache_read(block, idx, "shared.dyn")
            sch.compute_at(read, k0)
            fused = sch.fuse(*sch.get_loops(read)[-2:])
            _, f1, f2, f3 = sch.split(fused, factors=[None, num_warps, 32, 4])
            sch.bind(f2, "threadIdx.x")
            sch.bind(f1, "threadIdx.y")
            sch.vectorize(f3)
            sch.storage_align(read, 0, axis=-2, factor=16, offset=8)     # no shared-memory bank conflicts
            sch.annotate(read, "tirx.manifest_shared_memory_local_stage", 1)
            sch.annotate(read, "double_buffer_scope", 0)
            return read

        a_g2s = fetch_to_shared(block_outer, 0)
        b_g2s = fetch_to_shared(block_outer, 1)
        _M.auto_inline_producers(sch, a_g2s)
        _M.auto_inline_producers(sch, b_g2s)

        # shared -> WMMA fragments, per K fragment
        a_frag = sch.cache_read(block_outer, 0, "wmma.matrix_a")
        b_frag = sch.cache_read(block_outer, 1, "wmma.matrix_b")
        sch.compute_at(a_frag, k1)
        sch.compute_at(b_frag, k1)
        # accumulator fragments -> shared -> global (where the epilogue is inlined)
        acc_to_global = sch.cache_write(block_outer, 0, "shared.dyn")
        sch.storage_align(acc_to_global, 0, -2, 16, 4)
        store = sch.cache_write(block_outer, 0, "wmma.accumulator")
        sch.reverse_compute_at(store, thread_idy)
        sch.reverse_compute_at(acc_to_global, thread_idy)
        i, j = sch.get_loops(store)[-2:]
        i0, i1 = sch.split(i, factors=[None, 16])
        j0, j1 = sch.split(j, factors=[None, 16])
        sch.reorder(i0, j0, i1, j1)
        block_init = sch.decompose_reduction(block_outer, k0)
        block_init_inner = sch.get_child_blocks(block_init)[0]

        intrins = wmma_intrin_group(
            load_scope="shared.dyn", store_scope="shared.dyn", in_dtype="float16", out_dtype="float32", trans_b=True)
        try:
            for frag, intrin in ((a_frag, intrins["load_a"]), (b_frag, intrins["load_b"])):
                i, j = sch.get_loops(frag)[-2:]
                i0, i1 = sch.split(i, factors=[None, 16])
                j0, j1 = sch.split(j, factors=[None, 16])
                sch.reorder(i0, j0, i1, j1)
                sch.unroll(i0)
                sch.unroll(j0)
                sch.tensorize(i1, intrin)
            sch.tensorize(sch.get_loops(block_init_inner)[-2], intrins["init"])
            sch.tensorize(sch.get_loops(store)[-2], intrins["store"])
            sch.tensorize(sch.get_loops(block_inner)[-3], intrins["compute"])
        except tvm.TVMError:                 # the kernel's shape did not fit an intrinsic: not ours
            return None
        _M.auto_inline_consumer_chain(sch, acc_to_global)
        fused = sch.fuse(*sch.get_loops(acc_to_global)[-2:])
        _, f1, f2 = sch.split(fused, factors=[None, 32, 4])
        sch.bind(f1, "threadIdx.x")
        sch.vectorize(f2)
        return sch
