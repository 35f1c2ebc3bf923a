"""scripts/bench_tvm_ring.py's TVMScript TMA ring (the benchmark itself needs the GPU machine): what each thread
adds up, in numpy, and that the kernel at the benchmark's size -- 132 blocks of 1024 threads, 4 stages of 51.2 KB
(more than the 48 KB of static shared memory: TVM makes it dynamic) -- comes out of TVM's CUDA codegen as C that
nvcc builds for sm_90a without spills, one bulk copy a refill."""

import re
import shutil

import numpy as np
import pytest
from scripts_loader import load_script


def test_each_thread_adds_up_every_threads_th_element_of_its_blocks_share():
    ring = load_script("bench_tvm_ring")
    blocks, chunks, ch, threads = 3, 2, 8, 4                  # ch: elements a chunk
    x = np.arange(blocks * chunks * ch, dtype=np.float32)
    want = np.zeros((blocks, threads), np.float32)
    for b in range(blocks):                                   # the kernel's loops, element by element
        for c in range(chunks):
            for i in range(ch // threads):
                for t in range(threads):
                    want[b, t] += x[(b * chunks + c) * ch + i * threads + t]
    np.testing.assert_array_equal(ring.ring_read_ref(x, blocks, threads), want)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_benchmarks_ring_builds_for_sm_90a_with_dynamic_shared_memory():
    from test_cuda_compile import nvcc

    ring = load_script("bench_tvm_ring")
    func = ring.make_ring_read(132, 12, 4, 51200, 1024)
    ptx = nvcc({"ring": func}, "ptx").decode()
    assert ".extern .shared" in ptx                           # the ring: dynamic shared memory
    copy = r"cp\.async\.bulk\.shared::cluster\.global\.mbarrier::complete_tx::bytes"
    assert len(re.findall(copy, ptx)) in (2, 1 + 4)           # the prologue's loop of 4 copies, maybe unrolled
    assert re.search(copy, ptx[ptx.index("fence.proxy.async.shared::cta"):])   # the refill: after the fence
    report = nvcc({"ring": func}, "cubin", "-Xptxas", "-v", report=True)
    assert "0 bytes spill stores" in report and "0 bytes spill loads" in report, report
