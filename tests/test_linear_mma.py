"""kernels/linear_mma.py, prefill's linears on mma.sync: against linear.py's numpy references on a GPU (every
epilogue; n not a multiple of the 128-row tile, one token; N not a multiple of the 128-column tile, as gpt2-xl's
c_attn, 4800), and what ptxas makes of it here: no spills, two blocks an SM, the products on tensor cores with
operands from ldmatrix and tiles by cp.async."""

import collections
import re
import shutil

import numpy as np
import pytest
from test_cuda_compile import ptxas_usage, sass
from test_flash_attention import TOL, cuda_device  # noqa: F401 (a fixture)

from tinygpt2 import kernels as K
from tinygpt2.errors import RuleError
from tinygpt2.tvm_shim import tvm

REFS = {"bias": K.linear_ref, "gelu": K.linear_gelu_ref, "residual": K.linear_residual_ref}
# (K, N, n): gpt2's c_fc at 37 tokens, gpt2-xl's c_attn (N = 37.5 tiles) at one token, a c_proj over 4C at 200
CASES = [(768, 3072, 37), (1600, 4800, 1), (3072, 768, 200), (64, 192, 129)]
TILES = [{}, dict(tile=(128, 64), warps=(2, 2)), dict(k_step=64, stages=3)]


def test_shapes_it_cannot_tile_are_refused():
    with pytest.raises(RuleError, match="K-steps"):
        K.make_linear_mma(770, 768)                                   # K not a whole number of 32-wide steps
    with pytest.raises(RuleError, match="whole 16 x 16 tiles"):
        K.make_linear_mma(768, 768, tile=(128, 96), warps=(2, 4))      # a warp's 24 columns
    with pytest.raises(RuleError, match="epilogue"):
        K.make_linear_mma(768, 768, "relu")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_it_builds_for_sm_90a_on_tensor_cores():
    """gpt2-xl's c_fc + GELU (symbolic n): registers for two blocks of 256 an SM (__launch_bounds__(256, 2): 128; ptxas
    then spills 20 bytes of addresses, reloaded once a K-step); in SASS a K-step of 32's 32 tensor-core products (a warp's 64 x 32
    of C: 4 x 4 tiles, 2 k-steps) from 12 ldmatrix.x4 (A: 4 a k-step, B: 2), the tiles by cp.async (LDGSTS) and no
    other store to shared memory; y written two halves a store (STG.E, 32 bits)."""
    func = K.make_linear_mma(1600, 6400, "gelu")
    spill, regs, _ = ptxas_usage(func)
    assert spill <= 32 and regs * 256 * 2 <= 65536, (spill, regs)
    ops = collections.Counter(op.split()[0] for op in sass({"lin": func})["lin_kernel"])
    assert ops["HMMA.16816.F32"] == 32 and ops["LDSM.16.M88.4"] == 12 and ops["LDGSTS.E.BYPASS.LTC128B.128"] > 0, ops
    assert not any(re.fullmatch(r"STS(\.\w+)*", op) for op in ops), ops
    assert ops["STG.E"] == 32 and "STG.E.U16" not in ops, ops


def check_against_numpy(func, k_in, n_out, n, epilogue, device):
    """func (a linear kernel of linear.py's signature, built for sm_90a) on the GPU against linear.py's numpy
    reference of its epilogue; y starts as NaN, so that an output left unwritten fails."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k_in)).astype("float16")
    w = (rng.standard_normal((n_out, k_in)) / np.sqrt(k_in)).astype("float16")
    b = rng.standard_normal(n_out).astype("float16")
    r = rng.standard_normal((n, n_out)).astype("float16")
    extra = (r,) if epilogue == "residual" else ()
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "cuda", "arch": "sm_90a"},
                                                                               host="llvm"))
    args = [tvm.runtime.tensor(a, device) for a in (x, w, b, *extra, np.full((n, n_out), np.nan, "float16"))]
    lib["main"](*args)
    np.testing.assert_allclose(args[-1].numpy().astype(np.float32),
                               REFS[epilogue](x, w, b, *extra).astype(np.float32), **TOL["float16"])


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("epilogue", list(REFS))
@pytest.mark.parametrize("k_in,n_out,n", CASES)
def test_it_matches_numpy_on_cuda(k_in, n_out, n, epilogue, tiles, cuda_device):
    check_against_numpy(K.make_linear_mma(k_in, n_out, epilogue, **tiles), k_in, n_out, n, epilogue, cuda_device)


def qkv_source(rules, dtype, arch):
    """The test model (CFG64) built for CUDA `arch` with `rules`, every kernel scheduled: (rule_of, the CUDA C
    of prefill's linear_qkv kernel)."""
    from test_cuda_compile import CFG64

    from tinygpt2 import compile as C

    sched, tgt, _ = C.build_scheduled(CFG64, "cuda", dtype, rules, arch=arch)
    assert all(sched.rule_of.values()), sched.rule_of
    src = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
    body = src[src.rindex("linear_qkv_kernel("):]
    return sched.rule_of, body[:body.index("\n}\n")]


def test_the_rule_entry_puts_it_in_the_model_for_cuda_fp16_prefill_only():
    """`matmul-mma` in front of `fused` (less matmul-wgmma) on sm_90a in fp16: prefill's four linears are this kernel (mma.sync, ldmatrix in
    their CUDA; the qkv one, say), decode's stay fused-decode's, every kernel scheduled; in float32 and on sm_80 the
    entry is dropped and tensor-core-matmul-async's WMMA schedule (fp16) takes the linears."""
    from tinygpt2.rules import GPU_FUSED, presets

    def kernels(dtype, arch):
        rules = ["matmul-mma", *(r for r in GPU_FUSED if r != "matmul-wgmma")]   # (matmul-wgmma would win)
        return qkv_source(rules, dtype, arch)

    rule_of, qkv = kernels("float16", "sm_90a")
    assert "mma_sync_aligned_m16n8k16" in qkv and "ldmatrix" in qkv and "wmma::" not in qkv
    assert {rule_of[k] for k in ("linear_qkv", "linear_attn_proj", "linear_fc_gelu", "linear_mlp_proj")} == {"hand-scheduled"}
    assert rule_of["ln_linear_qkv_n1"] == "hand-scheduled"
    rule_of, qkv = kernels("float16", "sm_80")
    assert "wmma::mma_sync" in qkv and "m16n8k16" not in qkv and rule_of["linear_qkv"] == "tensor-core-matmul-async"
    assert "m16n8k16" not in kernels("float32", "sm_90a")[1]
    assert "matmul-mma" not in presets("gpu")                        # no list of it alone
