"""side-prefetch (kernels/side_prefetch.py): decode's linears mark a progress word as they start, and a kernel
on a second stream prefetches the step's weights into L2 as far ahead of the newest mark as it may. Running it
needs the GPU machine (scripts/gpu_session.sh side); here: the prefetcher's rule, the marks in the CUDA C nvcc
gets, the kernels' registers, and the model built with the entry."""

import re
import shutil

import pytest

import numpy as np

from tinygpt2.config import PRESETS
from tinygpt2.kernels.side_prefetch import BLOCKS, CHUNK, PREFETCH, chunks_issued, prefetch_plan

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
MIB = 1 << 20


def test_each_matrix_is_prefetched_while_the_kernel_before_it_runs_and_not_once_its_own_has_started():
    sizes = [3 * MIB, 1 * MIB, 4 * MIB, 4 * MIB] * 2                  # a small step: 8 matrices, 24 MiB
    # progress - base: the end (KiB) of the newest started kernel's matrix -- 3 MiB once matrix 0's has started
    prefetch = [2 * MIB, 0, 0, 0] * 2                                 # the first 2 MiB of each layer's first matrix
    first_layer = [(0, o, o // CHUNK % BLOCKS) for o in range(0, 2 * MIB, CHUNK)]
    assert chunks_issued(sizes, prefetch, progress_kib=-1) == []      # the step before still running
    assert chunks_issued(sizes, prefetch, progress_kib=0) == first_layer   # round robin over the blocks
    assert chunks_issued(sizes, prefetch, progress_kib=3 * 1024) == []     # matrix 0's kernel has started
    assert chunks_issued(sizes, prefetch, progress_kib=8 * 1024) == []     # matrix 2's marked: 3 (none) is next
    second = chunks_issued(sizes, prefetch, progress_kib=12 * 1024)         # matrix 3's kernel has marked
    assert [c[:2] for c in second] == [(4, o) for o in range(0, 2 * MIB, CHUNK)]
    assert second[0][2] == len(first_layer) % BLOCKS                   # the blocks' turns go on across matrices


def test_the_plan_takes_each_kind_of_matrix_its_part_in_whole_kib():
    names = ["h.0.ln_1.c_attn.weight", "h.0.ln_2.c_fc.weight", "h.11.ln_2.c_fc.weight"]
    policy = {"ln_1.c_attn": (0, 4 * MIB + 100), "ln_2.c_fc": (1 / 4, 3 * MIB)}
    assert prefetch_plan(names, [15 * MIB, 20 * MIB, 4000], policy) == [(0, 4 * MIB), (5 * MIB, 3 * MIB), (0, 3072)]
    # the default: c_fc from the quarter attention_cluster prefetches on (gpt2-xl: 20 000 KiB, from 5000 KiB)
    assert PREFETCH["ln_2.c_fc"][0] == 1 / 4
    assert prefetch_plan(names[1:2], [6400 * 1600 * 2]) == [(5000 * 1024, PREFETCH["ln_2.c_fc"][1])]


def test_the_executor_table_is_the_marked_weights_in_read_order():
    from tinygpt2.runtime.executor import side_prefetch_weights
    from tinygpt2.weights import param_shapes

    cfg = PRESETS["gpt2-xl"]
    names = side_prefetch_weights(cfg)
    shapes = param_shapes(cfg, True)                                  # fused-decode's folded parameters
    assert len(names) == 4 * cfg.n_layer and set(names) <= set(shapes)
    assert names[:4] == ["h.0.ln_1.c_attn.weight", "h.0.attn.c_proj.weight", "h.0.ln_2.c_fc.weight",
                         "h.0.mlp.c_proj.weight"]
    kib = sum(int(np.prod(shapes[n])) * 2 for n in names) // 1024
    assert kib == 48 * (15000 + 5000 + 20000 + 20000)                 # what the step's marks add up to (fp16)


@needs_nvcc
def test_a_mark_is_one_relaxed_add_by_block_0_before_the_wait_and_costs_no_register():
    from test_cuda_compile import cuda_source, ptxas_usage

    from tinygpt2.kernels.ln_linear import make_linear_residual_decode, make_ln_linear_decode
    from tinygpt2.kernels.side_prefetch import with_progress_mark

    for plain, kib in ((make_ln_linear_decode(1600, 6400, "float16", 1e-5, True, 8, "exit"), 20000),
                       (make_linear_residual_decode(6400, 1600, "float16", 8, "exit"), 20000)):
        marked = with_progress_mark(plain, kib)
        names = [p.name for p in marked.params]
        assert names[-2:] == ["progress", "y"] and names[:-2] == [p.name for p in plain.params][:-1]
        src = cuda_source({"k": marked})
        body = src[src.rindex("k_kernel("):]
        assert body.count("tvm_builtin_ptx_red_relaxed_gpu_global_add_u32") == 1
        mark = re.search(r"if \(\(\(\(\(int\)blockIdx.x\) == 0\) && \(\(\(int\)threadIdx.y\) == 0\)\) && "
                         r"\(\(\(int\)threadIdx.x\) == 0\)\) \{\s*tvm_builtin_ptx_red_relaxed_gpu_global_add_u32"
                         rf"\(\(&\(progress_ptr\[0\]\)\), \(uint\){kib}\);", body)
        assert mark and mark.start() < body.index("griddepcontrol_wait"), body[:1500]
        assert ptxas_usage(marked)[:2] == ptxas_usage(plain)[:2] == (0, 32)     # no spill, 32 registers either way


@needs_nvcc
def test_the_prefetcher_builds_polls_relaxed_and_prefetches_by_tma():
    from test_cuda_compile import nvcc, ptxas_usage

    from tinygpt2.kernels.side_prefetch import make_side_prefetch

    ptx = nvcc({"pf": make_side_prefetch(192)}, "ptx").decode()
    assert "cp.async.bulk.prefetch.L2.global" in ptx and "ld.relaxed.gpu.global.u32" in ptx
    spill, regs, _ = ptxas_usage(make_side_prefetch(192))
    assert spill == 0 and regs <= 32


@needs_nvcc
def test_the_model_with_side_prefetch_marks_its_four_linears_and_carries_the_prefetcher():
    """`side-prefetch` in front of `fused` (CUDA sm_90a, fp16): decode's functions take `progress` after their
    picked-token arguments, each layer's four linears are passed it and add their W's KiB, and the prefetcher is
    a kernel of the module (nothing calls it: the executor launches it). Dropped in float32 and before sm_90."""
    from test_cuda_compile import CFG64, C

    from tinygpt2.rules import GPU_FUSED

    sched, tgt, _ = C.build_scheduled(CFG64, "cuda", "float16", ["side-prefetch", *GPU_FUSED], arch="sm_90a")
    assert all(sched.rule_of.values()) and "side_prefetch_n1" in sched.rule_of
    assert [p.name for p in sched.mod["decode_greedy"].params][:4] == ["ids", "pos", "history", "progress"]
    assert [p.name for p in sched.mod["decode"].params][:3] == ["ids", "pos", "progress"]
    built = C.codegen(sched, tgt)
    src = C.device_module(built.mod, "cuda").inspect_source()
    C_, F = CFG64.n_embd, CFG64.n_inner
    marks = {}
    for kernel in src.split('extern "C" __global__')[1:]:             # each kernel's declaration, then definition
        name = re.search(r"(\w+)_kernel\(", kernel).group(1)
        found = re.findall(r"global_add_u32\(\(&\(progress_ptr\[0\]\)\), \(uint\)(\d+)\)", kernel)
        if found:
            marks[name] = found[0]
    assert marks == {"ln_linear_qkv_n1": str(3 * C_ * C_ * 2 // 1024), "linear_attn_proj_n1": str(C_ * C_ * 2 // 1024),
                     "ln_linear_fc_gelu_n1": str(C_ * F * 2 // 1024), "linear_mlp_proj_n1": str(F * C_ * 2 // 1024)}
    assert built.mod.get_function("side_prefetch_n1", query_imports=True) is not None
    for dtype, arch in (("float32", "sm_90a"), ("float16", "sm_80")):
        plain, *_ = C.build_scheduled(CFG64, "cuda", dtype, ["side-prefetch", *GPU_FUSED], arch=arch)
        assert "side_prefetch_n1" not in plain.rule_of
        assert "progress" not in [p.name for p in plain.mod["decode"].params]


def test_the_executor_advances_base_a_step_at_a_time_and_reads_it_back_from_the_device():
    """_SidePrefetch's bookkeeping, on the CPU device (its stream calls are no-ops there): each launch hands the
    prefetcher the base of its step and moves on by the step's KiB, wrapping at 2^32 as the uint32 word does; sync
    reads the word back; `idle` (trace_decode.py --side-idle) hands a base 2^31 KiB ahead, which it never reaches."""
    from tinygpt2.runtime.executor import _SidePrefetch
    from tinygpt2.tvm_shim import cpu_device

    bases = []
    side = _SidePrefetch(lambda table, progress, base: bases.append(base), None, cpu_device(), 3_000_000_000)
    side.launch()
    side.launch()
    assert bases == [0, 3_000_000_000] and side.base == 6_000_000_000 - (1 << 32)
    side.idle = True
    side.launch()
    assert bases[-1] == (6_000_000_000 - (1 << 32) + (1 << 31)) % (1 << 32)
    side.progress.copyfrom(np.array([123], np.uint32))
    side.sync()
    assert side.base == 123
