"""scripts/bench_tvm_mlp_layers.py's one-launch MLP in TVMScript (the benchmark itself needs the GPU machine): its
numpy reference, against the same arithmetic written out element by element, and the kernel at the benchmark's
size -- 132 blocks of 256 threads, one an SM for the whole launch -- built by TVM for sm_90a without spills, with
the synchronisation the design rests on in its PTX: TMA copies into mbarriers, float atomics for the partial sums,
a release add and an acquire loop for the grid-wide barrier, and the sums read back through L2."""

import re
import shutil

import numpy as np
import pytest
from scripts_loader import load_script


def test_the_reference_is_x_plus_c_proj_of_gelu_of_c_fc_layer_after_layer_in_fp16_steps():
    mlp = load_script("bench_tvm_mlp_layers")
    rng = np.random.default_rng(1)
    L, F, C = 2, 6, 4
    w1 = rng.standard_normal((L, F, C)).astype(np.float16)
    w2t = rng.standard_normal((L, F, C)).astype(np.float16)
    x = rng.standard_normal(C).astype(np.float16)
    want = x.copy()
    for layer in range(L):                                    # one output at a time
        h = [np.float16(mlp.gelu_ref(sum(np.float32(w1[layer, j, k]) * np.float32(want[k]) for k in range(C))))
             for j in range(F)]
        y = [np.float16(sum(np.float32(h[j]) * np.float32(w2t[layer, j, i]) for j in range(F))) for i in range(C)]
        want = np.array([np.float16(np.float32(want[i]) + np.float32(y[i])) for i in range(C)])
    np.testing.assert_allclose(mlp.mlp_layers_ref(w1, w2t, x).astype(np.float32), want.astype(np.float32),
                               rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_kernel_builds_for_sm_90a_with_its_synchronisation():
    from test_cuda_compile import nvcc

    mlp = load_script("bench_tvm_mlp_layers")
    func = mlp.make_mlp_layers(8, 1600, 6400, 132)
    ptx = nvcc({"mlp": func}, "ptx").decode()
    assert ".extern .shared" in ptx                           # the ring: dynamic shared memory (200 KB)
    assert "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes" in ptx
    assert len(re.findall(r"red\.global\.add\.v4\.f32", ptx)) == 2            # a thread's 8 partial sums
    assert "atom.release.gpu.global.add.u32" in ptx and "ld.acquire.gpu.global.u32" in ptx
    assert len(re.findall(r"ld\.global\.cg\.f32", ptx)) == 7                    # x's sums, through L2
    assert len(re.findall(r"ld\.shared\.v4", ptx)) >= 2 * 13  # W and x by 16 bytes in the c_fc step
    report = nvcc({"mlp": func}, "cubin", "-Xptxas", "-v", report=True)
    assert "0 bytes spill stores" in report and "0 bytes spill loads" in report, report
