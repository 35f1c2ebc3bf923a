"""Prefill's attention on mma.sync, FlashAttention-2's layout (kernels/flash_attention_mma.py), against numpy's
three-step attention: built for sm_90a here, its SASS read (the products on tensor cores with operands from ldmatrix,
S and P never stored to shared memory), and run where a CUDA GPU is (the lent machine)."""

import collections
import re
import shutil

import numpy as np
import pytest
from test_cuda_compile import ptxas_usage, sass
from test_flash_attention import TOL, cuda_device, inputs  # noqa: F401 (a fixture)

from tinygpt2.errors import RuleError
from tinygpt2.kernels.flash_attention import flash_attention_ref
from tinygpt2.kernels.flash_attention_mma import make_flash_attention_mma
from tinygpt2.tvm_shim import tirx, tvm

# (heads, head_dim, n_ctx, n new tokens, m): n not a multiple of the 64-query tile, m > n (keys before the prompt),
# one token, gpt2-xl's 1024-token prefill, and m - n not a multiple of the 64-key tile
CASES = [(3, 64, 256, 37, 37), (2, 64, 128, 64, 128), (1, 64, 128, 1, 1), (25, 64, 1024, 1024, 1024),
         (12, 64, 1024, 200, 700)]


def test_heads_other_than_64_wide_are_refused():
    with pytest.raises(RuleError, match="head_dim 64"):
        make_flash_attention_mma(4, 32, 128)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_it_builds_for_sm_90a_with_s_and_p_in_registers():
    """gpt2-xl's attention (symbolic n): no spills, three blocks of 128 an SM by registers (136 with nvcc 13: the 400
    blocks of a 1024-token prefill leave 4 of the shortest for a second round on 132 SMs), 45 KiB of static shared
    memory; in SASS a key tile's 64 tensor-core products (S: 8 column tiles x 4 k-steps, P V: 4 x 8), K's and V's
    fragments by ldmatrix (V's transposed), the tiles by cp.async (LDGSTS), and no store to shared memory at all."""
    func = make_flash_attention_mma(25, 64, 1024)
    spill, regs, smem = ptxas_usage(func)
    assert spill == 0 and regs * 128 * 3 <= 65536 and smem <= 48 * 1024, (spill, regs, smem)
    ops = collections.Counter(op.split()[0] for op in sass({"flash": func})["flash_kernel"])
    assert ops["HMMA.16816.F32"] == 64, ops
    assert ops["LDSM.16.M88.4"] >= 8 and ops["LDSM.16.MT88.4"] == 16 and ops["LDGSTS.E.BYPASS.128"] > 0, ops
    assert not any(re.fullmatch(r"STS(\.\w+)*", op) for op in ops), ops


@pytest.mark.parametrize("H,D,P,n,m", CASES)
def test_it_matches_numpy_on_cuda(H, D, P, n, m, cuda_device):
    qkv, k_cache, v_cache = inputs(H, D, P, n, m, "float16")
    func = make_flash_attention_mma(H, D, P, seq_len=n)
    func = func.specialize({func.params[3]: tirx.IntImm("int64", m)})
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "cuda", "arch": "sm_90a"},
                                                                               host="llvm"))
    args = [tvm.runtime.tensor(a, cuda_device) for a in (qkv, k_cache, v_cache, np.full((n, H * D), np.nan, "float16"))]
    lib["main"](*args)
    np.testing.assert_allclose(args[-1].numpy(), flash_attention_ref(qkv, k_cache, v_cache, m), **TOL["float16"])


def test_the_rule_entry_puts_it_in_the_model_for_cuda_fp16_only():
    """`flash-prefill-mma` (in `fused`, which has flash-prefill) on sm_90a in fp16: prefill's attention is this
    kernel (mma.sync, ldmatrix in its CUDA), every kernel scheduled; in float32 and on sm_80 the entry is dropped and
    flash_attention.py's kernel stays (WMMA in fp16); alone, without flash-prefill, it asks for nothing."""
    from test_cuda_compile import CFG64

    from tinygpt2 import compile as C
    from tinygpt2.rules import GPU_FUSED, presets

    def flash_source(dtype, arch, rules):
        sched, tgt, _ = C.build_scheduled(CFG64, "cuda", dtype, rules, arch=arch)
        assert all(sched.rule_of.values()), sched.rule_of
        src = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
        body = src[src.rindex("flash_attention_kernel("):]
        return body[:body.index("\n}\n")]

    assert "flash-prefill-mma" in GPU_FUSED
    mma = flash_source("float16", "sm_90a", GPU_FUSED)
    assert "mma_sync_aligned_m16n8k16" in mma and "ldmatrix" in mma and "wmma::" not in mma
    wmma = flash_source("float16", "sm_80", GPU_FUSED)
    assert "wmma::mma_sync" in wmma and "m16n8k16" not in wmma
    assert "m16n8k16" not in flash_source("float32", "sm_90a", GPU_FUSED)
    assert "wmma::mma_sync" in flash_source("float16", "sm_90a", [r for r in GPU_FUSED if r != "flash-prefill-mma"])
    assert "flash-prefill-mma" not in presets("gpu")                 # no list of it alone: it needs flash-prefill
