"""scripts/bench_flash_mma.py, prefill's attention as FlashAttention-2 lays it out, in raw CUDA (the benchmark itself
needs the GPU machine): its FLOP count over the causal triangle, and the kernel as launched -- both instances built
by nvcc for sm_90a, within 48 KB of static shared memory, the unbounded one without spills in three blocks of 128 an
SM; in SASS its products on the tensor cores (HMMA.16816) with operands from ldmatrix (LDSM), and no store to shared
memory at all: the tiles arrive by cp.async (LDGSTS), and S and P stay in registers."""

import re
import shutil

import numpy as np
import pytest
from scripts_loader import load_script
from test_cuda_compile import cuobjdump_sass


def test_flops_count_the_products_over_the_causal_triangle():
    fm = load_script("bench_flash_mma")
    n, m = 5, 8                                                          # 3 keys cached before the 5 new queries
    visible = np.arange(m)[None, :] <= (m - n) + np.arange(n)[:, None]   # [n, m]: query i sees keys j <= m - n + i
    assert fm.flops(n, m, heads=2) == 2 * 2 * visible.sum() * fm.D * 2


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_the_kernel_builds_for_sm90a_its_s_and_p_in_registers(tmp_path):
    from test_bench_weight_stream import build

    fm = load_script("bench_flash_mma")
    args = "const half*, const half*, const half*, half*, int, int, int, int, float"
    err = build(tmp_path, fm.FLASH_MMA_KERNEL, {f"flash_mma<{b}>": args for b in (1, 4)})
    report = re.findall(r"Compiling entry function '_Z9flash_mmaILi(\d)E\w*'.*?(\d+) bytes spill stores.*?"
                        r"Used (\d+) registers.*?(\d+) bytes smem", err, re.S)
    got = {int(b): (int(spill), int(regs), int(smem)) for b, spill, regs, smem in report}
    assert set(got) == {1, 4}, err
    for minb, (spill, regs, smem) in got.items():
        assert smem <= 48 * 1024 and regs * 128 * (3 if minb == 1 else 4) <= 65536, (minb, got)
    assert got[1][0] == 0, got

    out = cuobjdump_sass(tmp_path / "k.cubin")
    bodies = [k for k in re.split(r"Function : ", out)[1:] if k.startswith("_Z9flash_mma")]
    assert len(bodies) == 2, out[:300]                                  # (build() adds the other benches' kernels)
    for body in bodies:
        # a key tile: S is 8 n-tiles x 4 k-steps, P V 4 k-steps x 8 n-tiles: 32 mma each way, unrolled
        assert len(re.findall(r"HMMA\.16816\.F32", body)) == 64, body[:200]
        assert "LDSM.16.M88.4" in body and "LDSM.16.MT88.4" in body      # K's rows, and V's transposed
        assert "LDGSTS" in body and not re.search(r"\bSTS\b", body)
