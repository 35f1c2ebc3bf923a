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

Narrower tiles (128 x 64, 64 x 64, 8 warps) would give GPT-2's narrow outputs more thread blocks
(gpt2-xl's c_proj, 6400 -> 1600, gets 13 blocks for 132 SMs at n = 128), but in TVM 0.27 every
tile other than 128 x 128 fails to lower ("tvm_access_ptr element type must match the source
buffer", float16 vs float32 shared memory): MatmulTensorization's fixed tile is the one that works.
"""

from __future__ import annotations

from tinygpt2.tvm_shim import dl, tirx, tvm

_M = dl.gpu.matmul                      # DLight's matmul module: its analysis helpers and its WMMA schedule
MIN_EXTENT = 16                         # one WMMA fragment: a smaller fixed extent stays on CUDA cores


class TensorCoreMatmul(_M.GPUScheduleRule):
    """fp16 x fp16 -> fp32 matmuls on tensor cores (WMMA), head-dimension-sized extents included."""

    def apply(self, func, target, _):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if target.kind.name != "cuda" or _M.check_sm_version(str(target.attrs.get("arch", ""))) < 70:
            return None
        sch = tvm.s_tir.Schedule(func)
        reduction_blocks = _M.get_reduction_blocks(sch, sch.get_child_blocks(_M.get_root_block(sch)))
        if reduction_blocks is None:
            return None
        stmt = sch.get(reduction_blocks[0])
        index_maps = _M.get_index_map(stmt)
        if index_maps is None:                           # not a matmul (decode's n = 1 GEMVs included)
            return None
        # both inputs fp16 (the Cast to float32 accumulation is what the WMMA f16f16f32 intrinsic does)
        reads = [r.source.dtype for r in stmt.reads if r.source.dtype != stmt.writes[0].source.dtype]
        if stmt.writes[0].source.dtype != "float32" or len(reads) != 2 or set(reads) != {"float16"}:
            return None
        # the extents as C[S, I, J] += A[S, I, K] * B[S, J, K]: DLight's gate is "all of I, J, K > 64"
        extents = index_maps[0].map_shape([iv.dom.extent for iv in stmt.iter_vars])
        if any(isinstance(e, tirx.IntImm) and int(e) < MIN_EXTENT for e in extents[1:]):
            return None
        return _M.MatmulTensorization().apply(func, target, _)
