"""The fused decode layernorm + linear (kernels/ln_linear.py) against the two unfused references in
sequence, run on the WebGPU adapter (llvmpipe in CI), and its CUDA C checked for the intended code."""

import shutil

import numpy as np
import pytest

from tinygpt2.kernels.ln_linear import WEBGPU_MAX_LANES, ln_linear_ref, make_ln_linear_decode, vector_width
from tinygpt2 import kernels as K

# fp32: a C-long dot product of float32 sums in another order than numpy's
TOL = {"float32": dict(rtol=1e-4, atol=1e-4), "float16": dict(rtol=1e-2, atol=1e-2)}


def inputs(rng, C, N, dtype):
    x = (3 * rng.standard_normal((1, C)) + 2).astype(dtype)           # non-zero mean: the mean matters
    gamma = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    beta = (0.05 * rng.standard_normal(C)).astype(dtype)
    w = (0.08 * rng.standard_normal((N, C))).astype(dtype)
    b = (0.05 * rng.standard_normal(N)).astype(dtype)
    return x, gamma, beta, w, b


def run_on_webgpu(C, N, dtype, gelu, rng):
    from tinygpt2.runtime.webgpu import run_kernel

    x, gamma, beta, w, b = inputs(rng, C, N, dtype)
    func = make_ln_linear_decode(C, N, dtype, 1e-5, gelu, max_lanes=WEBGPU_MAX_LANES)
    y0 = np.full((1, N), np.nan, dtype)                               # every element must be written
    *ins, y = run_kernel(func, [x, gamma, beta, w, b, y0], dtype)
    for a, a0 in zip(ins, (x, gamma, beta, w, b)):
        np.testing.assert_array_equal(a, a0)                          # inputs untouched
    return y, ln_linear_ref(x, gamma, beta, w, b, 1e-5, gelu)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_ref_is_the_unfused_pair(rng):
    x, gamma, beta, w, b = inputs(rng, 48, 100, "float16")
    h = K.layernorm_ref(x, gamma, beta)
    np.testing.assert_array_equal(ln_linear_ref(x, gamma, beta, w, b), K.linear_ref(h, w, b))
    np.testing.assert_array_equal(ln_linear_ref(x, gamma, beta, w, b, gelu=True), K.linear_gelu_ref(h, w, b))


def test_vector_width():
    assert vector_width(768, "float16") == 8 and vector_width(1600, "float32") == 4
    assert vector_width(44, "float16") == 4 and vector_width(45, "float32") == 1
    assert vector_width(768, "float16", WEBGPU_MAX_LANES) == 4


# (run_kernel rounds buffers up to 4 bytes: odd-length float16 arrays cannot come back, hence no odd
# sizes in float16 below)
SMALL = [(48, 100, "float32"), (48, 100, "float16"),  # N not a multiple of the 8 rows of a block; 6-12 vectors
         (46, 38, "float32"), (46, 38, "float16"),    # C = 2 mod 4: 2-lane vectors
         (45, 37, "float32"),                         # odd C: scalar "vectors"; odd N
         (300, 18, "float32"), (300, 18, "float16")]  # C > 256 threads; 75 vectors: a partial last pass


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("C,N,dtype", SMALL)
def test_small_shapes_on_webgpu(rng, C, N, dtype, gelu):
    y, want = run_on_webgpu(C, N, dtype, gelu, rng)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("C,N,gelu", [(768, 2304, False),     # GPT-2 small's ln_1 + c_attn
                                      (1600, 6400, True)])    # gpt2-xl's ln_2 + c_fc: a tail of 8 lanes
def test_gpt2_shapes_on_webgpu(rng, C, N, gelu, dtype):
    y, want = run_on_webgpu(C, N, dtype, gelu, rng)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cuda_source(dtype):
    """gpt2-xl's fc for an H100: 16-byte loads of W, the row sums as warp shuffles, and barriers only
    between the phases (none per element of the dot product)."""
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import tvm

    func = make_ln_linear_decode(1600, 4800, dtype, gelu=True)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=TG.make_target("cuda", "sm_90a"))
    src = ex.mod.imports[0].inspect_source()
    vec = {"float16": "uint4", "float32": "float4"}[dtype]
    assert f"*({vec}*)(w_reg_ptr" in src and f"= *({vec}*)(w_ptr" in src        # vector loads of W
    assert f"= *({vec}*)(h_ptr" in src                                         # and of h
    assert "__shfl_down_sync" in src
    assert src.count("__syncthreads") < 10
    assert "__launch_bounds__(256)" in src


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_two_rows_per_warp_on_webgpu(rng, monkeypatch, dtype):
    """The rows-per-warp knob (1 by default): 16 rows a block, the last block partly past N."""
    from tinygpt2.kernels import ln_linear

    monkeypatch.setattr(ln_linear, "ROWS_PER_WARP", 2)
    y, want = run_on_webgpu(300, 50, dtype, True, rng)
    np.testing.assert_allclose(y, want, **TOL[dtype])
