"""Decode's hand-scheduled linears (kernels/ln_linear.py): layernorm + linear (its gamma and beta folded into
the weights by fold_layernorm) against the two unfused references in sequence, linear + residual against
prefill's reference, run on the WebGPU adapter (llvmpipe in CI), and their CUDA C checked for the
intended code."""

import re
import shutil

import numpy as np
import pytest

from tinygpt2.kernels.ln_linear import (WEBGPU_MAX_LANES, fold_layernorm, lanes_per_row, linear_residual_decode_ref,
                                       ln_linear_ref, make_linear_residual_decode, make_ln_linear_decode, pipe_grid,
                                       vector_width)
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


def run_on_webgpu(C, N, dtype, gelu, rng, preload=False):
    from tinygpt2.runtime.webgpu import run_kernel

    x, gamma, beta, w, b = inputs(rng, C, N, dtype)
    folded = fold_layernorm(gamma, beta, w, b)                        # (W', b', row sums of W')
    func = make_ln_linear_decode(C, N, dtype, 1e-5, gelu, max_lanes=WEBGPU_MAX_LANES, preload=preload)
    y0 = np.full((1, N), np.nan, dtype)                               # every element must be written
    *ins, y = run_kernel(func, [x, *folded, y0], dtype)
    for a, a0 in zip(ins, (x, *folded)):
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


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fold_layernorm_is_the_same_linear(rng, dtype):
    """W' @ ((x - mu) * rstd) + b' = W @ ((x - mu) * rstd * gamma + beta) + b: the layernorm's affine moved
    into the linear, and the row sums of W' that make_ln_linear_decode subtracts mu times."""
    x, gamma, beta, w, b = inputs(rng, 48, 100, "float32")
    w2, b2, s = fold_layernorm(gamma.astype(dtype), beta.astype(dtype), w.astype(dtype), b.astype(dtype))
    assert (w2.dtype, b2.dtype, s.dtype) == (np.dtype(dtype), np.dtype(dtype), np.float32)
    np.testing.assert_allclose(s, w2.astype(np.float64).sum(axis=1), rtol=1e-6)
    xhat = K.layernorm_ref(x)                                              # normalized, no affine
    np.testing.assert_allclose(xhat @ w2.T.astype(np.float32) + b2, ln_linear_ref(x, gamma, beta, w, b),
                               **TOL[dtype])


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


def run_residual_on_webgpu(K, N, dtype, rng, preload=False):
    from tinygpt2.runtime.webgpu import run_kernel

    x = rng.standard_normal((1, K)).astype(dtype)
    w = (0.08 * rng.standard_normal((N, K))).astype(dtype)
    b = (0.05 * rng.standard_normal(N)).astype(dtype)
    r = rng.standard_normal((1, N)).astype(dtype)
    func = make_linear_residual_decode(K, N, dtype, max_lanes=WEBGPU_MAX_LANES, preload=preload)
    y0 = np.full((1, N), np.nan, dtype)
    *ins, y = run_kernel(func, [x, w, b, r, y0], dtype)
    for a, a0 in zip(ins, (x, w, b, r)):
        np.testing.assert_array_equal(a, a0)
    return y, linear_residual_decode_ref(x, w, b, r)


def test_lanes_per_row():
    """One warp a row while each thread needs at most 8 loads; more for long rows, up to the block."""
    assert [lanes_per_row(n) for n in (96, 200, 256, 257, 384, 800, 4000)] == [32, 32, 32, 64, 64, 128, 256]


@pytest.mark.parametrize("K,N,dtype", [(48, 100, "float32"), (46, 38, "float16"), (45, 37, "float32"),
                                       (1100, 30, "float32"),     # 275 vectors: 64 lanes a row, partial pass
                                       (3072, 50, "float16"),     # gpt2's c_proj shape of row: 768 vectors
                                       (6400, 20, "float32")])    # gpt2-xl's: 1600 vectors, 256 lanes
def test_linear_residual_on_webgpu(rng, K, N, dtype):
    y, want = run_residual_on_webgpu(K, N, dtype, rng)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.parametrize("C,N,dtype", [(48, 100, "float32"), (300, 18, "float16")])
def test_one_wave_kernels_with_their_epilogue_preloaded_on_webgpu(rng, C, N, dtype):
    """preload: b' and s, or b and the residual, in registers before the dot product -- the same outputs,
    every row written (N not a multiple of a block's rows; a partial last pass)."""
    y, want = run_on_webgpu(C, N, dtype, True, rng, preload=True)
    np.testing.assert_allclose(y, want, **TOL[dtype])
    y, want = run_residual_on_webgpu(C, N, dtype, rng, preload=True)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("ln", [True, False])
def test_one_wave_kernels_can_load_their_epilogue_before_the_dot_product(tmp_path, ln):
    """gpt2-xl's c_fc (ln + GELU) and the attention's c_proj (residual, prefetch_w), with PDL. As measured
    (preload=False), their bias and s or residual are loaded after the lanes' shuffles, just before the store, so
    that every block ends by waiting out a memory latency: in SASS, loads between the last SHFL and the STG. With
    preload, none there, and no spill."""
    from test_cuda_compile import cuobjdump_sass, nvcc, ptxas_usage

    def late_loads(preload):
        if ln:
            func = make_ln_linear_decode(1600, 6400, "float16", 1e-5, True, pdl="exit", preload=preload)
        else:
            func = make_linear_residual_decode(1600, 1600, "float16", pdl="exit", prefetch_w=True, preload=preload)
        (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin"))
        sass = cuobjdump_sass(tmp_path / "k.cubin")
        store = sass.index("STG")
        return sass[sass.rindex("SHFL", 0, store):store].count("LDG"), ptxas_usage(func)[0]

    assert late_loads(False)[0] >= 1
    assert late_loads(True) == (0, 0)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cuda_source(dtype):
    """gpt2-xl's fc for an H100: 16-byte loads of W and of x straight into registers, the row sums and x's
    statistics as warp shuffles, and no shared memory or barrier at all (the layernorm is folded)."""
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import tvm

    func = make_ln_linear_decode(1600, 6400, dtype, gelu=True)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=TG.make_target("cuda", "sm_90a"))
    src = ex.mod.imports[0].inspect_source()
    body = src[src.index("ln_linear_decode_kernel(half" if dtype == "float16" else "ln_linear_decode_kernel(float"):]
    body = body[body.index("{"):]
    vec = {"float16": "uint4", "float32": "float4"}[dtype]
    loads = {"float16": 7, "float32": 13}[dtype]                    # 1600 / 8 or / 4 vectors over 32 lanes
    assert body.count(f"*({vec}*)(w_reg_ptr") == loads and body.count(f"*({vec}*)(x_reg_ptr") == loads
    assert body.count("__shfl_down_sync") == 3 * 5                 # 3 sums over a warp's 32 lanes
    assert "__syncthreads" not in body and "__shared__" not in body
    assert "__launch_bounds__(256)" in src


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_source_of_a_long_row():
    """gpt2-xl's mlp c_proj (K = 6400): 128 lanes a row, 7 loads each, every one of them up front; the
    row's sum crosses 4 warps, through shared memory (one barrier pair)."""
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import tvm

    func = make_linear_residual_decode(6400, 1600, "float16")
    ex = tvm.compile(tvm.IRModule({"main": func}), target=TG.make_target("cuda", "sm_90a"))
    src = ex.mod.imports[0].inspect_source()
    assert src.count("= *(uint4*)(w_ptr") == 7 and src.count("= *(uint4*)(x_ptr") == 7
    first_use = src.index("partial_ptr[0] = (partial_ptr[0] +")
    assert src.rindex("= *(uint4*)(w_ptr", 0, first_use) > 0                    # loads before any arithmetic
    assert src.count("__syncthreads") <= 2


# --- make_linear_pipe_decode: the same products as persistent pipelined grids (pipe-decode) -----------------------

@pytest.mark.parametrize("in_flight,preload", [(1, False), (2, False), (3, False), (1, True)])
@pytest.mark.parametrize("K,N,dtype,ln,gelu,blocks", [
    (48, 100, "float32", False, False, 3),     # 25 groups of 4 rows over 3 blocks: 9 passes, the last partial
                                               # (in_flight 2: the last trip's second group skipped)
    (1100, 30, "float32", True, False, 4),     # 275 vectors: 64 lanes a row (2 rows a group), a partial pass
                                               # (4 passes; in_flight 3: a second trip of one group)
    (64, 37, "float16", True, True, 5),        # ln + gelu, 37 rows: the last group's rows past N stored nowhere
    (3072, 50, "float16", False, False, 7)])   # gpt2's MLP c_proj rows: 128 lanes, one row a group
def test_pipelined_linear_on_webgpu(rng, K, N, dtype, ln, gelu, blocks, in_flight, preload):
    """Every block's groups in turn, W loaded ahead of the group multiplied (in_flight: 1, the next group's copied
    over at each trip's end; 2 or 3 groups a trip, the buffers' roles rotated; preload: the epilogue's b and s or
    residual too): the same outputs as the two kernels it stands for (their references), every row written."""
    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode
    from tinygpt2.runtime.webgpu import run_kernel

    x, gamma, beta, w, b = inputs(rng, K, N, dtype)
    if ln:
        ins, want = [x, *fold_layernorm(gamma, beta, w, b)], ln_linear_ref(x, gamma, beta, w, b, 1e-5, gelu)
    else:
        r = rng.standard_normal((1, N)).astype(dtype)
        ins, want = [x, w, b, r], linear_residual_decode_ref(x, w, b, r)
    func = make_linear_pipe_decode(K, N, dtype, ln, gelu, max_lanes=WEBGPU_MAX_LANES, blocks=blocks,
                                   in_flight=in_flight, preload=preload)
    *after, y = run_kernel(func, [*ins, np.full((1, N), np.nan, dtype)], dtype)
    for a, a0 in zip(after, ins):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.parametrize("K,N,ln,rows,want", [(1600, 4800, True, 4, 400), (1600, 1600, False, 4, 400),
                                               (1600, 6400, True, 4, 400), (6400, 1600, False, 1, 400)])
def test_pipelined_grid_gives_its_blocks_equal_shares(K, N, ln, rows, want):
    """gpt2-xl's linears (rows: a group's, 128 threads over a row of K / 8 vectors): at most PIPE_BLOCKS (4 an SM
    of an H100) blocks, as few as give each block the same number of groups -- qkv's 1200 groups over 528 blocks
    would take 3 passes with the last 144 blocks' 2; over 400, 3 passes for every block."""
    from tinygpt2.kernels.ln_linear import PIPE_BLOCKS, make_linear_pipe_decode

    script = make_linear_pipe_decode(K, N, "float16", ln, pdl="exit").script()
    assert f'T.thread_binding(T.int64({want}), thread="blockIdx.x")' in script
    groups = N // rows
    passes = -(-groups // PIPE_BLOCKS)
    assert want <= PIPE_BLOCKS and want * passes == groups


@pytest.mark.parametrize("K,N,dtype,ln", [(6400, 1600, "float16", False), (3072, 50, "float16", False),
                                           (64, 37, "float16", True), (1100, 30, "float32", True)])
def test_pipelined_linear_of_256_threads_on_webgpu(rng, K, N, dtype, ln):
    """threads=256 (model.PIPE_THREADS_OF): the MLP c_proj's rows of 4C two a group (128 lanes each), gpt2-xl's in 2
    passes over 400 blocks instead of 4; on WebGPU's 4-lane vectors 256 lanes a row for 6400 and 3072 (one a
    group), 64 lanes for 1100 and 32 for 64 (4 and 8 a group): the same outputs as the references."""
    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode
    from tinygpt2.runtime.webgpu import run_kernel

    assert pipe_grid(6400, 1600, "float16", 8, threads=256) == (8, 800, 128, 2, 800, 400, 2)
    x, gamma, beta, w, b = inputs(rng, K, N, dtype)
    if ln:
        ins, want = [x, *fold_layernorm(gamma, beta, w, b)], ln_linear_ref(x, gamma, beta, w, b, 1e-5)
    else:
        r = rng.standard_normal((1, N)).astype(dtype)
        ins, want = [x, w, b, r], linear_residual_decode_ref(x, w, b, r)
    func = make_linear_pipe_decode(K, N, dtype, ln, max_lanes=WEBGPU_MAX_LANES, blocks=5, threads=256)
    *after, y = run_kernel(func, [*ins, np.full((1, N), np.nan, dtype)], dtype)
    for a, a0 in zip(after, ins):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_pipelined_linear_of_256_threads_fits_four_blocks_an_sm():
    """gpt2-xl's MLP c_proj with threads=256: its 400 blocks are one wave only at 4 blocks of 256 an SM of an H100's
    132, so __launch_bounds__(256, 4) holds ptxas to 64 registers a thread (at 48 bytes of spill; 80 without)."""
    from test_cuda_compile import ptxas_usage

    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    spill, regs, _ = ptxas_usage(make_linear_pipe_decode(6400, 1600, "float16", False, pdl="exit", threads=256))
    assert regs <= 64 and spill <= 64, (spill, regs)


# gpt2-xl's decode linears (K, N, ln, gelu): qkv, c_fc, the attention's c_proj, the MLP's c_proj
GPT2_XL_LINEARS = [(1600, 4800, True, False), (1600, 6400, True, True), (1600, 1600, False, False),
                   (6400, 1600, False, False)]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("K,N,ln,gelu", GPT2_XL_LINEARS)
def test_pipelined_linear_loads_its_first_rows_before_the_wait_four_blocks_an_sm(tmp_path, K, N, ln, gelu):
    """gpt2-xl's four linears for an H100, with PDL: at most 128 registers a thread (so that PIPE_BLOCKS' 4 blocks
    of 128 an SM fit in its 64K registers), no spill, and in SASS the first group's 7 loads of W before ACQBULK
    (griddepcontrol.wait), x's after, the next kernel let launch (PREEXIT, griddepcontrol.launch_dependents) only
    after the wait, inside the loop over groups, and the residual read coherently (TVM makes every pointer
    __restrict__: read-only loads may cross the wait)."""
    from test_cuda_compile import cuobjdump_sass, nvcc, ptxas_usage

    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    func = make_linear_pipe_decode(K, N, "float16", ln, gelu, pdl="exit")
    spill, regs, _ = ptxas_usage(func)
    assert spill == 0 and regs <= 128, (spill, regs)
    (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin"))
    sass = cuobjdump_sass(tmp_path / "k.cubin")
    acqbulk = sass.index("ACQBULK")
    assert sass[:acqbulk].count("LDG.E.128") == sass[:acqbulk].count("LDG") == 7            # W's alone
    assert "LDG" in sass[acqbulk:sass.index("BAR.SYNC")]                     # x, copied to shared memory after it
    assert acqbulk < sass.index("PREEXIT") and sass.count("PREEXIT") == 1
    if not ln:              # the residual, which a kernel before writes, by a coherent load (W's bias: read-only),
        loads = re.findall(r"LDG\.E\.U16\S*", sass)   # one of each a group (ptxas unrolls a loop of two groups)
        assert set(loads) == {"LDG.E.U16.CONSTANT", "LDG.E.U16"} and loads.count("LDG.E.U16") * 2 == len(loads)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("K,N,ln,gelu", GPT2_XL_LINEARS)
def test_pipelined_linear_copies_no_registers_with_two_or_three_groups_in_flight(tmp_path, K, N, ln, gelu):
    """in_flight=1's loop, one group a trip, ends by copying the next group's W into this one's registers (7 x 4
    registers a thread), and a copy waits for the loads just issued: in SASS, 24-26 register moves (ptxas keeps
    that loop rolled), so a block has one group in flight. in_flight 2 and 3 (2 or 3 groups a trip, the buffers'
    roles rotated) copy none: fewer moves than one group's registers, and no spill. Registers: at most 170 with 2
    (3 blocks of 128 an SM), 256 with 3 (qkv's take 196: 2 blocks an SM). Both measured slower than the copying
    loop on an H100 (docs/results/pipe_decode_h100.md)."""
    from test_cuda_compile import cuobjdump_sass, nvcc, ptxas_usage

    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    def moves(in_flight):
        func = make_linear_pipe_decode(K, N, "float16", ln, gelu, pdl="exit", in_flight=in_flight)
        (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin"))
        return len(re.findall(r"\bMOV R\d+, R\d+", cuobjdump_sass(tmp_path / "k.cubin"))), ptxas_usage(func)

    rolled, _ = moves(1)
    if N != 1600 or K != 1600:        # (the attention's c_proj: 2 groups a block, ptxas unrolls that loop itself)
        assert rolled >= 7 * 4 - 4, rolled
    for in_flight, most in ((2, 170), (3, 256)):
        rotated, (spill, regs, _) = moves(in_flight)
        assert rotated < 7 * 4 and spill == 0 and regs <= most, (in_flight, rotated, spill, regs)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_pipelined_linear_can_let_the_next_kernel_launch_at_its_start(tmp_path):
    """trigger="start" (what the one-wave linears do, measured slower here): PREEXIT right before ACQBULK, after
    the first group's loads."""
    from test_cuda_compile import cuobjdump_sass, nvcc

    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    func = make_linear_pipe_decode(1600, 4800, "float16", True, False, pdl="exit", trigger="start")
    (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin"))
    sass = cuobjdump_sass(tmp_path / "k.cubin")
    preexit, acqbulk = sass.index("PREEXIT"), sass.index("ACQBULK")
    assert sass[:preexit].count("LDG.E.128") == sass[:acqbulk].count("LDG") == 7 and preexit < acqbulk


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("K,N,ln,gelu", [(1600, 4800, True, False), (6400, 1600, False, False)])
def test_pipelined_linear_can_load_its_epilogue_a_group_ahead(tmp_path, K, N, ln, gelu):
    """gpt2-xl's qkv and MLP c_proj. As measured (preload=False), each group's store waits on its bias and s or
    residual, loaded in the group's own trip after the next group's W (qkv's read-only ones just before its lanes'
    shuffles, the MLP c_proj's after its block barriers): in SASS, loads between the trip's last 16-byte load of W
    and the STG. With preload they come a group ahead, beside W's: none there, no spill, at most 128 registers."""
    from test_cuda_compile import cuobjdump_sass, nvcc, ptxas_usage

    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    def loads_before_store(preload):
        func = make_linear_pipe_decode(K, N, "float16", ln, gelu, pdl="exit", preload=preload)
        (tmp_path / "k.cubin").write_bytes(nvcc({"k": func}, "cubin"))
        sass = cuobjdump_sass(tmp_path / "k.cubin")
        store = sass.index("STG")                    # the loads after the trip's last of W (a 16-byte one)
        return sass[sass.index("\n", sass.rindex("LDG.E.128", 0, store)):store].count("LDG"), ptxas_usage(func)

    assert loads_before_store(False)[0] >= 1
    loads, (spill, regs, _) = loads_before_store(True)
    assert loads == 0 and spill == 0 and regs <= 128, (loads, spill, regs)


def test_pipelined_linear_launches_the_next_kernel_at_its_last_group_or_the_one_before():
    """trigger "last": the next kernel may launch once every block is at its last group -- gpt2-xl's MLP c_proj
    gives a block 4 groups, so at it == 3; "before-last" (the model's for the MLP's c_proj, PIPE_TRIGGER) one group
    sooner, at it == 2."""
    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    for trigger, at in (("last", 3), ("before-last", 2)):
        code = make_linear_pipe_decode(6400, 1600, "float16", False, False, pdl="exit", trigger=trigger).script()
        guard = code[:code.index('griddepcontrol("launch_dependents"')].rsplit(" if ", 1)[-1]
        assert guard.startswith(f"it == T.int64({at}):"), trigger


def test_pipelined_linear_rejects_what_it_does_not_build():
    """A trigger other than start, last or before-last, or other than 1-3 groups in flight, or preload with more
    than one: a RuleError that names it."""
    from tinygpt2.errors import RuleError
    from tinygpt2.kernels.ln_linear import make_linear_pipe_decode

    with pytest.raises(RuleError, match="unknown trigger 'soon'"):
        make_linear_pipe_decode(1600, 4800, "float16", True, False, pdl="exit", trigger="soon")
    with pytest.raises(RuleError, match="in_flight=4"):
        make_linear_pipe_decode(1600, 4800, "float16", True, False, pdl="exit", in_flight=4)
    with pytest.raises(RuleError, match="preload with in_flight=2"):
        make_linear_pipe_decode(1600, 4800, "float16", True, False, pdl="exit", in_flight=2, preload=True)


def test_pipe_decode_pipelines_gpt2_xl_alone_of_the_hub_sizes():
    """A decode linear is pipelined where a block gets 3 groups of rows or more (PIPE_MIN_GROUPS), and qkv and the
    MLP's c_proj together or neither: gpt2-xl's get 3 and 4; gpt2-large's c_proj 3 but its qkv 2 (the c_proj
    alone measured 0.6% slower there), (distil)gpt2's and gpt2-medium's 1 or 2."""
    from tinygpt2.config import PRESETS
    from tinygpt2.model import pipelined

    got = {name: pipelined(cfg, "float16") for name, cfg in PRESETS.items()}
    assert got == {"distilgpt2": (), "gpt2": (), "gpt2-medium": (), "gpt2-large": (),
                   "gpt2-xl": ("ln_linear_qkv", "linear_mlp_proj")}


def test_pipe_decode_is_dropped_where_there_is_no_pdl():
    """Its point, the overlap of consecutive linears, needs PDL: `fused` keeps it on CUDA sm_90a, not on sm_80 or
    WebGPU (compile.hand_kernels, rules.SM90_REQUESTS)."""
    from tinygpt2 import targets
    from tinygpt2.compile import hand_kernels
    from tinygpt2.rules import resolve

    def hand(target, arch=None):
        return hand_kernels(target, resolve("fused", "gpu"), targets.make_target(target, arch))["hand"]

    assert "pipe-decode" in hand("cuda", "sm_90a") and "fused-decode" in hand("webgpu")
    assert "pipe-decode" not in hand("cuda", "sm_80") and "pipe-decode" not in hand("webgpu")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_model_with_pipe_decode_takes_the_pipelined_linears():
    """`fused` (CUDA sm_90a, fp16) at gpt2-xl's widths: decode's qkv and MLP c_proj are the pipelined grids (128
    threads, x in shared memory), qkv's letting the next kernel launch at its start, c_fc and the attention's c_proj
    the one-wave kernels; at gpt2's widths none is pipelined; without `fused-decode` there are no such linears."""
    from test_cuda_compile import CFG64, C

    from tinygpt2.config import GPT2Config
    from tinygpt2.rules import GPU_FUSED, GPU_TUNED

    def kernels(cfg, rules):
        sched, tgt, _ = C.build_scheduled(cfg, "cuda", "float16", rules, arch="sm_90a")
        assert all(sched.rule_of.values())
        src = C.device_module(C.codegen(sched, tgt).mod, "cuda").inspect_source()
        return {re.search(r"(\w+)_kernel\(", k).group(1): k for k in src.split('extern "C" __global__')[1:]}

    xl = kernels(GPT2Config(vocab_size=512, n_positions=64, n_embd=1600, n_layer=1, n_head=25), GPU_FUSED)
    for name in ("ln_linear_fc_gelu_n1", "linear_attn_proj_n1"):
        assert "x_sh" not in xl[name], name
    for name in ("ln_linear_qkv_n1", "linear_mlp_proj_n1"):
        k = xl[name]
        assert "__launch_bounds__(128)" in k and "x_sh" in k, name
        # qkv lets the attention (attention-cluster) launch at once, for its copies of K and V to run while qkv
        # streams, as fused's qkv does; the others let the next kernel launch at their last group, after the wait
        early = k.index("griddepcontrol_launch_dependents()") < k.index("griddepcontrol_wait()")
        assert early == (name == "ln_linear_qkv_n1"), name
    small = kernels(CFG64, GPU_FUSED)
    assert not any("x_sh" in small[name] for name in ("ln_linear_qkv_n1", "linear_mlp_proj_n1"))
    plain, *_ = C.build_scheduled(CFG64, "cuda", "float16", ["pipe-decode", *GPU_TUNED], arch="sm_90a")
    assert not any("ln_linear" in str(gv) for gv in plain.mod.get_global_vars())   # DLight's kernels stay
