"""Every kernel against its numpy reference, at new-token counts 1 (decode), 7 and 64, fp32 and fp16.

Each kernel is compiled once (its sequence length is symbolic) for the CPU and called directly.
"""

import functools

import numpy as np
import pytest

from tinygpt2 import kernels as K
from tinygpt2.tvm_shim import T, tvm, to_tensor

V, P, C, H = 300, 96, 48, 4           # vocab, context, width, heads: small but not toy-symmetric
D = C // H
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=1e-2, atol=1e-2)}
LENGTHS = [1, 7, 64]
DTYPES = ["float32", "float16"]


@functools.lru_cache(maxsize=None)
def build(factory, *args):
    """Compile one PrimFunc for the CPU; returns a callable taking numpy/tensors."""
    func = getattr(K, factory)(*args)
    return tvm.compile(tvm.IRModule({"main": func}), target="llvm")["main"]


def call(kernel, *args):
    """Call a compiled kernel; numpy arrays become tensors, which are returned as numpy."""
    dev = tvm.cpu()
    targs = [to_tensor(a, dev) if isinstance(a, np.ndarray) else a for a in args]
    kernel(*targs)
    return [t.numpy() if isinstance(a, np.ndarray) else None for a, t in zip(args, targs)]


def rand(rng, *shape, dtype="float32", scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_embedding(rng, n, dtype):
    ids = rng.integers(0, V, n).astype(np.int32)
    wte, wpe = rand(rng, V, C, dtype=dtype), rand(rng, P, C, dtype=dtype)
    m = n + 5                                    # 5 tokens already in the cache: positions 5 .. n+4
    out = call(build("make_embedding", V, P, C, dtype), ids, wte, wpe, m, np.zeros((n, C), dtype))[-1]
    np.testing.assert_allclose(out, K.embedding_ref(ids, wte, wpe, m), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_layernorm(rng, n, dtype):
    x = rand(rng, n, C, dtype=dtype, scale=3.0) + 2.0       # non-zero mean: the mean matters
    gamma, beta = rand(rng, C, dtype=dtype) + 1, rand(rng, C, dtype=dtype)
    out = call(build("make_layernorm", C, dtype, 1e-5), x, gamma, beta, np.zeros_like(x))[-1]
    np.testing.assert_allclose(out, K.layernorm_ref(x, gamma, beta), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_without_affine(rng, dtype):
    """affine=False (the layernorms whose gamma, beta are folded into the next linear): x and y only,
    the same as gamma = 1, beta = 0."""
    x = rand(rng, 5, C, dtype=dtype, scale=3.0) + 2.0
    out = call(build("make_layernorm", C, dtype, 1e-5, False), x, np.zeros_like(x))[-1]
    want = K.layernorm_ref(x)
    np.testing.assert_array_equal(want, K.layernorm_ref(x, np.ones(C, dtype), np.zeros(C, dtype)))
    np.testing.assert_allclose(out, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("k_in,n_out", [(C, 3 * C), (4 * C, C)])
def test_linear(rng, n, dtype, k_in, n_out):
    x, w, b = rand(rng, n, k_in, dtype=dtype), rand(rng, n_out, k_in, dtype=dtype, scale=0.1), rand(rng, n_out, dtype=dtype)
    out = call(build("make_linear", k_in, n_out, dtype), x, w, b, np.zeros((n, n_out), dtype))[-1]
    np.testing.assert_allclose(out, K.linear_ref(x, w, b), **TOL[dtype])


@pytest.mark.parametrize("rational_tanh", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_linear_gelu(rng, n, dtype, rational_tanh):
    """c_fc with GELU fused into its epilogue = GELU(linear) (GELU applied to the float32 sum); the CPU
    build's tanh (rational_tanh) as well."""
    x, w, b = rand(rng, n, C, dtype=dtype), rand(rng, 4 * C, C, dtype=dtype, scale=0.3), rand(rng, 4 * C, dtype=dtype)
    out = call(build("make_linear_gelu", C, 4 * C, dtype, None, rational_tanh), x, w, b, np.zeros((n, 4 * C), dtype))[-1]
    np.testing.assert_allclose(out, K.linear_gelu_ref(x, w, b), **TOL[dtype])
    np.testing.assert_allclose(out, K.gelu_ref(K.linear_ref(x, w, b)), **TOL[dtype])     # the unfused pair


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_linear_residual(rng, n, dtype):
    """c_proj with the residual add fused into its epilogue = residual + linear."""
    x, w, b = rand(rng, n, 4 * C, dtype=dtype), rand(rng, C, 4 * C, dtype=dtype, scale=0.1), rand(rng, C, dtype=dtype)
    r = rand(rng, n, C, dtype=dtype)
    out = call(build("make_linear_residual", 4 * C, C, dtype), x, w, b, r, np.zeros((n, C), dtype))[-1]
    np.testing.assert_allclose(out, K.linear_residual_ref(x, w, b, r), **TOL[dtype])
    np.testing.assert_allclose(out, K.add_ref(r, K.linear_ref(x, w, b)), **TOL[dtype])


@pytest.mark.parametrize("rational_tanh", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_gelu(rng, n, dtype, rational_tanh):
    x = rand(rng, n, 4 * C, dtype=dtype, scale=3.0)
    out = call(build("make_gelu", 4 * C, dtype, None, rational_tanh), x, np.zeros_like(x))[-1]
    np.testing.assert_allclose(out, K.gelu_ref(x), **TOL[dtype])


def test_rational_tanh_is_tanh_for_every_float32_range():
    """The CPU build's GELU (tanh as a ratio of polynomials, clamped at |z| = 9) against numpy's tanh in
    float64, densely from -30 to 30: past the clamp, across it and near 0, within a few float32 ulps."""
    x = np.linspace(-30, 30, 600_001, dtype=np.float32)
    out = call(build("make_gelu", x.size, "float32", 1, True), x[None], np.zeros((1, x.size), np.float32))[-1][0]
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * (1 + np.tanh(K.gelu.SQRT_2_OVER_PI * (x64 + 0.044715 * x64 ** 3)))
    np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-6)


def test_the_cpu_builds_gelu_calls_no_tanh():
    """On the CPU LLVM turns tanh into a libm call per vector lane; the rational form is arithmetic only."""
    assert "tanh" in K.make_linear_gelu(C, 4 * C).script()
    assert "tanh" not in K.make_linear_gelu(C, 4 * C, rational_tanh=True).script()


def test_gelu_is_gpt2s_gelu_new():
    """gelu_ref is the tanh form GPT-2 uses (transformers' "gelu_new"), not the erf GELU."""
    torch = pytest.importorskip("torch")
    from transformers.activations import NewGELUActivation
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    np.testing.assert_allclose(K.gelu_ref(x), NewGELUActivation()(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_residual_add(rng, n, dtype):
    a, b = rand(rng, n, C, dtype=dtype), rand(rng, n, C, dtype=dtype)
    out = call(build("make_add", C, dtype), a, b, np.zeros_like(a))[-1]
    np.testing.assert_allclose(out, K.add_ref(a, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_kv_append(rng, n, dtype):
    past = 3
    m = past + n
    qkv = rand(rng, n, 3 * C, dtype=dtype)
    k_cache, v_cache = rand(rng, H, P, D, dtype=dtype), rand(rng, H, P, D, dtype=dtype)
    k_out, v_out = call(build("make_kv_append", H, D, P, dtype), qkv, k_cache, v_cache, m)[1:3]
    k_want, v_want = K.kv_append_ref(qkv, k_cache, v_cache, m)
    np.testing.assert_array_equal(k_out, k_want)          # a copy: bit-exact, other positions untouched
    np.testing.assert_array_equal(v_out, v_want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_attention_kernels(rng, n, dtype):
    past = 2 if n < 64 else 0                  # decode/chunk over a non-empty cache, and a plain prefill
    m = past + n
    qkv = rand(rng, n, 3 * C, dtype=dtype)
    k_cache, v_cache = rand(rng, H, P, D, dtype=dtype), rand(rng, H, P, D, dtype=dtype)
    scores = call(build("make_attn_scores", H, D, P, dtype), qkv, k_cache, np.zeros((H, n, m), np.float32))[-1]
    np.testing.assert_allclose(scores, K.attn_scores_ref(qkv, k_cache, m), rtol=1e-4, atol=1e-4)
    # the probabilities come out in dtype (rounded as HF rounds them before p.v)
    probs = call(build("make_causal_softmax", H, D, dtype), scores, np.zeros_like(scores, dtype))[-1]
    want_probs = K.causal_softmax_ref(scores, D, dtype)
    assert probs.dtype == dtype
    np.testing.assert_allclose(probs, want_probs, **({"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else TOL[dtype]))
    # causal: query i sees positions <= past + i only, and each row sums to one
    assert np.all(probs[:, np.arange(n)[:, None] < np.arange(m)[None, :] - past] == 0)
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1, rtol=1e-5 if dtype == "float32" else 1e-2)
    out = call(build("make_attn_values", H, D, P, dtype), probs, v_cache, np.zeros((n, C), dtype))[-1]
    np.testing.assert_allclose(out, K.attn_values_ref(probs, v_cache, dtype), **TOL[dtype])


def test_attention_ref_matches_torch_sdpa(rng):
    """The composed reference equals PyTorch's causal attention (an independent implementation)."""
    torch = pytest.importorskip("torch")
    n = 9
    qkv = rand(rng, n, 3 * C)
    k_cache, v_cache = np.zeros((H, P, D), np.float32), np.zeros((H, P, D), np.float32)
    k_cache, v_cache = K.kv_append_ref(qkv, k_cache, v_cache, n)
    q, k, v = (torch.from_numpy(qkv[:, s * C:(s + 1) * C]).reshape(n, H, D).transpose(0, 1) for s in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(n, C)
    np.testing.assert_allclose(K.attention_ref(qkv, k_cache, v_cache, n), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_lm_head(rng, n, dtype):
    x, wte = rand(rng, n, C, dtype=dtype), rand(rng, V, C, dtype=dtype)
    out = call(build("make_lm_head", V, C, dtype), x, wte, np.zeros((1, V), np.float32))[-1]
    np.testing.assert_allclose(out, K.lm_head_ref(x, wte), **TOL[dtype])


# --- decode's kernels: static shapes, the position read from a buffer ---------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 5, P - 1])
def test_embedding_decode(rng, pos, dtype):
    ids = rng.integers(0, V, 1).astype(np.int32)
    wte, wpe = rand(rng, V, C, dtype=dtype), rand(rng, P, C, dtype=dtype)
    out = call(build("make_embedding_decode", V, P, C, dtype), ids, np.array([pos], np.int32), wte, wpe,
               np.zeros((1, C), dtype))[-1]
    np.testing.assert_array_equal(out, K.embedding_ref(ids, wte, wpe, pos + 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 5, P - 1])
def test_kv_append_decode(rng, pos, dtype):
    qkv = rand(rng, 1, 3 * C, dtype=dtype)
    k_cache, v_cache = rand(rng, H, P, D, dtype=dtype), rand(rng, H, P, D, dtype=dtype)
    k_out, v_out = call(build("make_kv_append_decode", H, D, P, dtype), qkv, k_cache, v_cache,
                        np.array([pos], np.int32))[1:3]
    k_want, v_want = K.kv_append_ref(qkv, k_cache, v_cache, pos + 1)
    np.testing.assert_array_equal(k_out, k_want)
    np.testing.assert_array_equal(v_out, v_want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 6, P - 1])
def test_attention_decode_kernels(rng, pos, dtype):
    """Over the whole cache, masked past `pos`: equal to the prefill-style kernels' refs at m = pos + 1,
    with zeros beyond, even when the cache past the position holds NaN."""
    m = pos + 1
    qkv = rand(rng, 1, 3 * C, dtype=dtype)
    k_cache, v_cache = rand(rng, H, P, D, dtype=dtype), rand(rng, H, P, D, dtype=dtype)
    k_cache[:, m:], v_cache[:, m:] = np.nan, np.nan               # stale cache entries must not leak in
    p = np.array([pos], np.int32)
    scores = call(build("make_attn_scores_decode", H, D, P, dtype), qkv, k_cache, p,
                  np.zeros((H, 1, P), np.float32))[-1]
    np.testing.assert_allclose(scores, K.pad_keys(K.attn_scores_ref(qkv, k_cache, m), P), rtol=1e-4, atol=1e-4)
    probs = call(build("make_softmax_decode", H, D, P), scores, p, np.zeros_like(scores))[-1]
    want_probs = K.causal_softmax_ref(scores[:, :, :m], D)
    np.testing.assert_allclose(probs, K.pad_keys(want_probs, P), rtol=1e-5, atol=1e-6)
    out = call(build("make_attn_values_decode", H, D, P, dtype), probs, v_cache, p, np.zeros((1, C), dtype))[-1]
    np.testing.assert_allclose(out, K.attn_values_ref(want_probs, v_cache, dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_head,head_dim,n_ctx,pos", [(H, D, P, 0), (H, D, P, 6), (H, D, P, 62), (H, D, P, 63),
                                                       (H, D, P, P - 1),          # chunks of 63 keys: 2 of them
                                                       (2, 64, 1024, 64), (2, 64, 1024, 700)])  # GPT-2's head
def test_decode_attention_on_webgpu(rng, n_head, head_dim, n_ctx, pos, dtype):
    """The GPU-only fused decode attention (append K, V + the three kernels above, over chunks of keys
    merged at the end), run on the WebGPU adapter (llvmpipe in CI): the composed references, and the
    cache updated at pos only. Positions at chunk edges: pos the last key of a chunk, or the first."""
    check_decode_attention_on_webgpu(rng, n_head, head_dim, n_ctx, pos, dtype)


def check_decode_attention_on_webgpu(rng, n_head, head_dim, n_ctx, pos, dtype, max_lanes=4):
    from tinygpt2.runtime.webgpu import run_kernel

    C_ = n_head * head_dim
    qkv = rand(rng, 1, 3 * C_, dtype=dtype)
    k_cache, v_cache = rand(rng, n_head, n_ctx, head_dim, dtype=dtype), rand(rng, n_head, n_ctx, head_dim, dtype=dtype)
    k_cache[:, pos:], v_cache[:, pos:] = np.nan, np.nan                  # stale entries must not leak in
    func = K.make_decode_attention(n_head, head_dim, n_ctx, dtype, max_lanes=max_lanes)
    parts = [np.zeros(shape, dt) for shape, dt in K.decode_attention_parts(n_head, head_dim, n_ctx, dtype, max_lanes)]
    _, k_out, v_out, _, out, *_ = run_kernel(func, [qkv, k_cache, v_cache, np.array([pos], np.int32),
                                                    np.zeros((1, C_), dtype), *parts], dtype)
    want, k_want, v_want = K.decode_attention_ref(qkv, k_cache, v_cache, pos)
    np.testing.assert_allclose(out, want, **TOL[dtype])
    np.testing.assert_array_equal(k_out, k_want)                        # NaN past pos stays NaN
    np.testing.assert_array_equal(v_out, v_want)


@pytest.mark.parametrize("pos", [5, 700])
def test_decode_attention_in_another_geometry_on_webgpu(rng, pos):
    """The layout follows the vector width: 2-element loads give 32 lanes across a row of K or V and 2 groups
    of keys (4-element ones, above: 16 and 4; CUDA's fp16 build, 8-element: 8 and 8, checked on the GPU by
    scripts/gpu_check.py), still chunks of 64 keys."""
    assert K.attention._decode_attention_layout(64, 1024, "float16", 2) == (2, 32, 2, 64, 16)
    assert K.attention._decode_attention_layout(64, 1024, "float16", 8) == (8, 8, 8, 64, 16)
    assert K.attention._decode_attention_layout(64, 1024, "float32", 8)[0] == 4          # 16 bytes at most
    check_decode_attention_on_webgpu(rng, 2, 64, 1024, pos, "float16", max_lanes=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_head,n,m,n_ctx", [(H, 1, 1, P), (H, 7, 7, P), (3, 7, 37, P), (2, 5, 300, 512),
                                              (1, 3, 1024, 1024)])      # GPT-2's context: 4 keys a thread
def test_causal_softmax_gpu_on_webgpu(rng, n_head, n, m, n_ctx, dtype):
    """Prefill's hand-scheduled GPU softmax (`hand-softmax`), run on the WebGPU adapter at fixed n, m: the
    numpy reference, zeros past the mask, and the masked scores never read (NaN there stays out)."""
    from tinygpt2.runtime.webgpu import run_kernel
    from tinygpt2.tvm_shim import tirx

    func = K.make_causal_softmax_gpu(n_head, D, n_ctx, dtype)
    s_h, p_h = func.params                                 # fix the symbolic n, m: run_kernel needs shapes
    shape = [tirx.IntImm("int64", v) for v in (n_head, n, m)]
    func = func.specialize({s_h: tirx.decl_buffer(shape, "float32"), p_h: tirx.decl_buffer(shape, dtype)})
    scores = rand(rng, n_head, n, m, scale=4.0)
    want = K.causal_softmax_ref(scores, D, dtype)
    masked = np.arange(m)[None, :] > (m - n + np.arange(n))[:, None]            # [n, m]
    scores[:, masked] = np.nan
    _, probs = run_kernel(func, [scores, np.full((n_head, n, m), np.nan, dtype)], dtype)
    np.testing.assert_allclose(probs, want, **TOL[dtype])
    assert (probs[:, masked] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_head,n,m", [(H, 1, 1), (H, 7, 7), (3, 7, 37), (2, 5, 300), (1, 40, 40)])
def test_causal_softmax_cpu(rng, n_head, n, m, dtype):
    """Prefill's hand-scheduled CPU softmax (`hand-softmax` in a CPU list): rows whose kept keys are fewer
    than, a multiple of and not a multiple of its 16 lanes; the numpy reference, zeros past the mask, and
    the masked scores never read (NaN there stays out)."""
    scores = rand(rng, n_head, n, m, scale=4.0)
    want = K.causal_softmax_ref(scores, D, dtype)
    masked = np.arange(m)[None, :] > (m - n + np.arange(n))[:, None]            # [n, m]
    scores[:, masked] = np.nan
    probs = call(build("make_causal_softmax_cpu", n_head, D, dtype), scores, np.full((n_head, n, m), np.nan, dtype))[-1]
    np.testing.assert_allclose(probs, want, **({"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else TOL[dtype]))
    assert (probs[:, masked] == 0).all()


def test_exp_poly_is_exp_over_float32s_range():
    """The CPU softmax's exp (kernels/_cpu_math.py: Cephes' polynomial, 2^k from the exponent bits) against
    numpy's exp in float64, densely from -87 to 88 (float32's normal range) and clamped past it; and its
    kernel calls no exp, which LLVM would make a libm call per score."""
    from tinygpt2.kernels._cpu_math import exp_poly

    @T.prim_func(s_tir=True)
    def exp_kernel(x: T.Buffer((400_000,), "float32"), y: T.Buffer((400_000,), "float32")):
        for i in range(400_000):
            with T.sblock("exp"):
                vi = T.axis.spatial(400_000, i)
                y[vi] = exp_poly(x[vi])

    x = np.concatenate([np.linspace(-87, 88, 399_996, dtype=np.float32), np.float32([-1e4, -90, 90, 1e4])])
    y = np.zeros_like(x)
    tvm.compile(tvm.IRModule({"main": exp_kernel}), target="llvm")["main"](to_tensor(x, tvm.cpu()), out := to_tensor(y, tvm.cpu()))
    exact = np.exp(np.clip(x.astype(np.float64), -87, 88))
    np.testing.assert_allclose(out.numpy(), exact, rtol=2e-7, atol=0)
    assert "T.exp(" in K.make_causal_softmax(H, D).script() and "T.exp(" not in K.make_causal_softmax_cpu(H, D).script()


@pytest.mark.parametrize("opts", [{},                                         # the default: prefetch, K-steps of 32
                                  {"k": 16, "prefetch": False},               # as first measured K-major
                                  {"k_major": False, "vector": 1}])           # DLight's layout
@pytest.mark.parametrize("n,k_in,n_out", [(70, 48, 200), (128, 96, 256)])   # padded and exact tiles
def test_tiled_matmul_tile_on_webgpu(rng, n, k_in, n_out, opts):
    """`tiled-matmul` (rules.TiledMatmul) schedules float32 linears on CUDA with 64 x 64 tiles of 16 x 8
    threads, stored K-major in shared memory (rules.to_k_major), the next K-step loaded into registers
    during this one (rules.prefetch_to_registers); here the same schedule is put on the WebGPU adapter
    (llvmpipe) to run it: c_proj + residual against numpy, shapes that do not divide the tile (rows, and K
    by the K-step) padded. In DLight's layout with 1-wide loads: TVM's WebGPU lowering rejects wider ones
    there (storage_rewrite). CUDA's were checked on the H200 (scripts/bench_matmul.py --dtype float32,
    scripts/gpu_check.py: docs/results/bench_matmul_fp32_h200.md)."""
    from tinygpt2.rules import TiledMatmul
    from tinygpt2.runtime.webgpu import run_kernel
    from tinygpt2.targets import make_target

    rule = TiledMatmul(kinds=("webgpu",), **opts)
    target = make_target("webgpu")
    assert rule.get_configs(target).block_size_x * rule.get_configs(target).micro_size_x == 64
    func = rule.apply(K.make_linear_residual(k_in, n_out, "float32", seq_len=n), target, False).mod["main"]
    x, w = rand(rng, n, k_in), rand(rng, n_out, k_in, scale=0.1)
    b, r = rand(rng, n_out), rand(rng, n, n_out)
    out = run_kernel(func, [x, w, b, r, np.zeros((n, n_out), "float32")])[-1]
    np.testing.assert_allclose(out, K.linear_residual_ref(x, w, b, r), **TOL["float32"])


def test_argmax_lowest_id_on_ties(rng):
    logits = rand(rng, 1, V)
    logits[0, [17, 250]] = logits.max() + 1                        # a tie: the lower id wins, as np.argmax
    out = call(build("make_argmax", V), logits, np.zeros(1, np.int32))[-1]
    np.testing.assert_array_equal(out, K.argmax_ref(logits))
    assert out[0] == 17


@pytest.mark.parametrize("pos", [0, 9, P - 1])
def test_advance_feeds_the_next_decode_step(rng, pos):
    nxt, ids, p = np.array([123], np.int32), np.array([5], np.int32), np.array([pos], np.int32)
    history = rng.integers(0, V, P + 1).astype(np.int32)
    got = call(build("make_advance", P), nxt, ids, p, history)[1:]
    want = K.advance_ref(nxt, ids, p, history)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[0][0] == 123 and got[1][0] == pos + 1 and got[2][pos + 1] == 123


@pytest.mark.parametrize("n_vocab,threads,tie", [(V, 256, (17, 250)),       # under two logits a thread
                                                 (50257, 256, (40000, 50256)),  # GPT-2's: groups, a tail
                                                 (50257, 1024, (3, 4)),     # CUDA's 1024 threads
                                                 (7, 256, (2, 6))])         # fewer logits than threads
def test_argmax_advance_gpu_on_webgpu(rng, n_vocab, threads, tie):
    """decode_greedy's hand-scheduled tail (fused-decode): argmax then advance in one kernel of one
    block, run on the WebGPU adapter (llvmpipe in CI) against the two references in sequence; the
    lower id wins a tie, as numpy's argmax."""
    from tinygpt2.runtime.webgpu import run_kernel

    logits = rand(rng, 1, n_vocab)
    logits[0, list(tie)] = logits.max() + 1
    ids, pos = np.array([5], np.int32), np.array([P - 2], np.int32)
    history = rng.integers(0, n_vocab, P + 1).astype(np.int32)
    func = K.make_argmax_advance_gpu(n_vocab, P, threads)
    out_logits, *got, nxt = run_kernel(func, [logits, ids, pos, history, np.full(1, -1, np.int32)])
    np.testing.assert_array_equal(nxt, K.argmax_ref(logits))
    assert nxt[0] == tie[0]
    for g, w in zip(got, K.advance_ref(nxt, ids, pos, history)):      # ids, pos, history
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(out_logits, logits)


def test_argmax_advance_gpu_all_masked_picks_id_0():
    """Every logit -inf: numpy's argmax is 0, and so is the kernel's (no logit beats its initial best)."""
    from tinygpt2.runtime.webgpu import run_kernel

    logits = np.full((1, 300), -np.inf, np.float32)
    *_, nxt = run_kernel(K.make_argmax_advance_gpu(300, P, 256), [logits, np.array([5], np.int32),
                                                                 np.array([0], np.int32), np.zeros(P + 1, np.int32),
                                                                 np.full(1, -1, np.int32)])
    assert nxt[0] == np.argmax(logits[0]) == 0


def test_the_parsers_cheaper_stack_reads_frames_as_inspect_does():
    """tvm_shim gives TVMScript's parser an inspect.stack() that reads lines from linecache (TVM's own scans
    sys.modules for every frame of every @T.prim_func: minutes, in pytest). What the parser reads of it --
    each frame, its file, line, function and calling line -- is what inspect.stack() gives."""
    import inspect

    from tinygpt2 import tvm_shim

    def key(f):
        return f.frame, f.filename, f.lineno, f.function, f.code_context and f.code_context[0].strip()

    ours, theirs = tvm_shim._InspectWithCheapStack.stack(), inspect.stack()
    assert [key(f) for f in ours[1:]] == [key(f) for f in theirs[1:]]      # [0]: this frame, a line apart
    assert ours[0].function == theirs[0].function and "tvm_shim" in ours[0].code_context[0]
    assert isinstance(tvm.tirx.script.parser.entry.inspect, tvm_shim._InspectWithCheapStack)
