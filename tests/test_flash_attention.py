"""Prefill's attention as one kernel (kernels/flash_attention.py) against numpy's three-step attention:
the CPU's kernel run here, the CUDA-core variant run on the WebGPU adapter (llvmpipe in CI), the
tensor-core (WMMA) variant built for sm_90a here and run where a CUDA GPU is (the lent machine:
`python -m pytest tests/test_flash_attention.py`)."""

import collections
import re
import shutil

import numpy as np
import pytest
from test_cuda_compile import TVM_FLAGS, nvcc, sass, shared_arrays

from tinygpt2.kernels.flash_attention import (flash_attention_ref, flash_layout, make_flash_attention,
                                              make_flash_attention_cpu)
from tinygpt2.tvm_shim import tirx, to_tensor, tvm

TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=2e-3, atol=2e-3)}

# (heads, head_dim, n_ctx, n new tokens, m = length after them): n not a multiple of the query tile,
# m > n (the new tokens continue a sequence: every query sees keys before the prompt), m a whole tile
CASES = [(3, 64, 256, 37, 37), (2, 32, 256, 50, 130), (2, 64, 128, 64, 128), (1, 64, 128, 1, 1)]
# head dimensions that are no multiple of 16 (the tests' tiny models: 12) take the CUDA-core variant only
SMALL_HEADS = [(4, 12, 128, 37, 40), (3, 18, 64, 20, 20)]


def inputs(H, D, P, n, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    qkv = (2 * rng.standard_normal((n, 3 * H * D))).astype(dtype)      # scores of a few units: a peaked softmax
    k_cache = np.full((H, P, D), np.nan, dtype)                          # past m: stale, possibly NaN
    v_cache = np.full((H, P, D), np.nan, dtype)
    k_cache[:, :m] = rng.standard_normal((H, m, D))
    v_cache[:, :m] = rng.standard_normal((H, m, D))
    return qkv, k_cache, v_cache


def kernel(H, D, P, n, m, dtype, tensor_cores, registers=True, **tiles):
    """The kernel built for this n, with m bound (the runners take no symbolic shapes)."""
    func = make_flash_attention(H, D, P, dtype, tensor_cores, registers, seq_len=n, **tiles)
    return func.specialize({func.params[3]: tirx.IntImm("int64", m)})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("H,D,P,n,m", CASES + SMALL_HEADS + [(2, 64, 128, 40, 40)])
def test_cpu_kernel(H, D, P, n, m, dtype):
    """The CPU's (`flash-prefill` in a CPU list), one build for every n and m (both symbolic): rows whose
    kept keys are fewer than, a multiple of and not a multiple of its 16 lanes, heads of 12 and 18 (4 and
    2 lanes), and the NaN past m never read. Its probabilities are rounded to dtype after the division,
    as the reference's are: float32 within 1e-5, float16 within 2e-3."""
    qkv, k_cache, v_cache = inputs(H, D, P, n, m, dtype)
    ex = tvm.compile(tvm.IRModule({"main": make_flash_attention_cpu(H, D, P, dtype)}), target="llvm")
    dev = tvm.cpu()
    out = to_tensor(np.full((n, H * D), np.nan, dtype), dev)
    ex["main"](to_tensor(qkv, dev), to_tensor(k_cache, dev), to_tensor(v_cache, dev), m, out)
    np.testing.assert_allclose(out.numpy(), flash_attention_ref(qkv, k_cache, v_cache, m), **TOL[dtype])


# the CUDA-core variant with its lanes' operands in registers (CUDA's, in float32), run on WebGPU: fully unrolled,
# a head of 64 takes llvmpipe 30-50 s to compile, so the smaller heads (the loops are the same)
REGISTERS = [(2, 32, 256, 50, 130), *SMALL_HEADS]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("H,D,P,n,m,registers", [(*c, False) for c in CASES + SMALL_HEADS] +
                         [(*c, True) for c in REGISTERS])
def test_cuda_core_variant_on_webgpu(H, D, P, n, m, registers, dtype):
    """WebGPU's attention (registers=False, model.py) and CUDA's float32 one (registers=True)."""
    from tinygpt2.runtime.webgpu import run_kernel

    qkv, k_cache, v_cache = inputs(H, D, P, n, m, dtype)
    out0 = np.full((n, H * D), np.nan, dtype)                            # every element must be written
    got = run_kernel(kernel(H, D, P, n, m, dtype, False, registers), [qkv, k_cache, v_cache, out0], dtype)
    np.testing.assert_array_equal(got[0], qkv)                           # inputs untouched
    np.testing.assert_array_equal(got[1], k_cache)
    np.testing.assert_allclose(got[-1], flash_attention_ref(qkv, k_cache, v_cache, m), **TOL[dtype])


@pytest.mark.parametrize("tiles", [dict(warps=2, bk=64), dict(warps=4, bk=32)])
def test_cuda_core_variant_with_more_warps_and_longer_key_tiles_on_webgpu(tiles):
    """The CUDA-core variant's warps and BK are knobs on CUDA (scripts/bench_flash.py's regs-WxBK; 1 x 32, the
    default, is what fits WebGPU): other tiles give the same attention (a small head: quick to compile)."""
    from tinygpt2.runtime.webgpu import run_kernel

    H, D, P, n, m = 3, 18, 128, 70, 100
    qkv, k_cache, v_cache = inputs(H, D, P, n, m, "float32")
    got = run_kernel(kernel(H, D, P, n, m, "float32", False, True, **tiles),
                     [qkv, k_cache, v_cache, np.full((n, H * D), np.nan, "float32")], "float32")
    np.testing.assert_allclose(got[-1], flash_attention_ref(qkv, k_cache, v_cache, m), **TOL["float32"])


def test_the_reference_is_softmax_attention_over_visible_keys():
    """flash_attention_ref, spelled out for one query: softmax over keys 0 .. its position, then V."""
    H, D, P, n, m = 2, 16, 32, 3, 10
    qkv, k_cache, v_cache = inputs(H, D, P, n, m, "float32")
    out = flash_attention_ref(qkv, k_cache, v_cache, m)
    i, h = 1, 1                                                          # query 1 sits at position m - n + 1 = 8
    s = k_cache[h, :9] @ qkv[i, h * D:(h + 1) * D] / np.sqrt(D)
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(out[i, h * D:(h + 1) * D], p @ v_cache[h, :9], rtol=1e-5)


def test_layouts():
    # CUDA fp16 (gpt2's head_dim): 2 warps of 16 query rows, 64-key tiles, 16-byte loads, padded rows
    assert flash_layout(64, "float16", True) == dict(warps=2, bq=32, bk=64, vec=8, prefetch=True, registers=False,
                                                     dp=72, pp=72, sp=68, k_rows=64)
    assert flash_layout(32, "float16", True, warps=4)["k_rows"] == 116  # p_s [64, 72] is larger than a K tile [64, 40]
    # the CUDA-core variant (WebGPU, float32): one warp, 32-key tiles, vec4 loads, rows padded to odd
    # strides (the 16 rows a warp reads at once in 16 banks) ...
    assert flash_layout(64, "float32", False, registers=False) == dict(
        warps=1, bq=16, bk=32, vec=4, prefetch=False, registers=False, dp=65, pp=33, sp=65, k_rows=32)
    # ... but for p_s, with Q and the scores in registers, where K and V are read a row at a time: 16-byte rows
    assert flash_layout(64, "float32", False) == dict(warps=1, bq=16, bk=32, vec=4, prefetch=False, registers=True,
                                                      dp=68, pp=33, sp=65, k_rows=32)


def _cuda_source(H, D, P, seq_len=None, dtype="float16", tensor_cores=True, registers=True):
    func = make_flash_attention(H, D, P, dtype, tensor_cores, registers, seq_len=seq_len).with_attr("global_symbol", "flash")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    return tvm.compile(tvm.IRModule({"flash": func}), target=target).mod.imports[0].inspect_source()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_tensor_core_variant_builds_for_sm_90a():
    src = _cuda_source(25, 64, 1024)                                     # gpt2-xl's attention
    # q.k^T: 4 x 4 fragment products a key tile, p.v: 4 x 4 (unrolled), on tensor cores
    assert src.count("wmma::mma_sync") == 32
    shared = sum(count * {"half": 2, "float": 4}[t] for t, count in shared_arrays(src).values())
    assert shared <= 48 * 1024, shared                                   # static shared memory: 48 KiB at most
    assert "for (int64_t kt" in src                                      # one loop over key tiles, no scores buffer


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_cuda_core_variant_keeps_its_padded_rows_for_sm_90a():
    """float32 on CUDA: q_s, k_s, v_s, s_s keep their odd row strides in the CUDA C (TVM would compact a
    [16, 65] allocation whose last column is never read to [16, 64]: the flat allocations under views
    are what keeps them). Without the padding gpt2-xl's 1024-token attention took 795 us a call on an
    H200, with it 473 (scripts/bench_flash.py --dtype float32)."""
    shared = shared_arrays(_cuda_source(25, 64, 1024, dtype="float32", tensor_cores=False, registers=False))
    assert {k: n for k, (_, n) in shared.items() if k != "trade_ptr"} == {
        "q_mem_ptr": 16 * 65, "k_s_ptr": 32 * 65, "v_mem_ptr": 32 * 65, "s_mem_ptr": 16 * 65}
    assert {t for t, _ in shared.values()} == {"float"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: cannot build CUDA here")
def test_cuda_core_variant_keeps_a_lanes_operands_in_registers_for_sm_90a():
    """float32 on CUDA (registers=True): a lane's row of Q, its 16 scores and its row's 32 probabilities in
    registers, so the products read K and V only, a row a key, which nvcc reads 16 bytes at a time (rows
    of 68 floats): in SASS a key tile is 2 x 16 x 64 FMAs and 2 x 256 16-byte loads of K and V (the first
    version: 2 x 64 FMAs in loops, a scalar load of each operand for each), and no stack."""
    func = make_flash_attention(25, 64, 1024, "float32", False, True)
    ops = collections.Counter(op.split()[0].removesuffix(".FTZ") for op in sass({"flash": func})["flash_kernel"])
    assert ops["FFMA"] >= 2 * 16 * 64 and ops["LDS.128"] >= 2 * 16 * 64 // 4, ops
    report = nvcc({"flash": func}, "cubin", *TVM_FLAGS, "-Xptxas=-v", report=True)
    assert re.findall(r"(\d+) bytes stack frame", report) == ["0"]


@pytest.fixture(scope="module")
def cuda_device():
    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU here: the WMMA variant runs on the lent GPU machine")
    return dev


@pytest.mark.parametrize("tiles", [{}, dict(warps=4, bk=32, prefetch=False)])     # BK < D: S's fragments < PV's
@pytest.mark.parametrize("H,D,P,n,m", CASES + [(25, 64, 1024, 1024, 1024), (12, 64, 1024, 200, 700)])
def test_tensor_core_variant_on_cuda(H, D, P, n, m, tiles, cuda_device):
    qkv, k_cache, v_cache = inputs(H, D, P, n, m, "float16")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    lib = tvm.compile(tvm.IRModule({"main": kernel(H, D, P, n, m, "float16", True, **tiles)}), target=target)
    args = [tvm.runtime.tensor(a, cuda_device) for a in (qkv, k_cache, v_cache, np.full((n, H * D), np.nan, "float16"))]
    lib["main"](*args)
    np.testing.assert_allclose(args[-1].numpy(), flash_attention_ref(qkv, k_cache, v_cache, m), **TOL["float16"])
