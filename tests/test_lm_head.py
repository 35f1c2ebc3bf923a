"""Decode's head on a GPU (kernels/lm_head.py's make_lm_head_decode): ln_f and lm_head as one persistent grid,
against the two kernels' references in sequence, run on the WebGPU adapter (llvmpipe in CI); and its CUDA C
checked for the intended code."""

import shutil

import numpy as np
import pytest

from tinygpt2 import kernels as K
from tinygpt2.kernels.ln_linear import WEBGPU_MAX_LANES, pipe_grid

TOL = {"float32": dict(rtol=1e-4, atol=1e-4), "float16": dict(rtol=1e-2, atol=1e-2)}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def inputs(rng, C, V, dtype, mean=2.0):
    x = (3 * rng.standard_normal((1, C)) + mean).astype(dtype)          # a mean far from 0: the mean matters
    gamma = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    beta = (0.05 * rng.standard_normal(C)).astype(dtype)
    wte = (0.08 * rng.standard_normal((V, C))).astype(dtype)
    return x, gamma, beta, wte


def test_ref_is_layernorm_then_the_head(rng):
    x, gamma, beta, wte = inputs(rng, 48, 100, "float16")
    np.testing.assert_array_equal(K.lm_head_decode_ref(x, gamma, beta, wte),
                                  K.lm_head_ref(K.layernorm_ref(x, gamma, beta), wte))


@pytest.mark.parametrize("C,V,dtype,blocks,mean", [
    (48, 100, "float32", 3, 2.0),        # 25 groups of 4 rows over 3 blocks: 9 passes, the last partial
    (64, 37, "float16", 5, 2.0),         # 37 rows: the last group's rows past the vocabulary stored nowhere
    (1100, 30, "float32", 4, 2.0),       # 275 vectors: 64 lanes a row (2 rows a group), x in two passes
    (1600, 1000, "float16", None, 2.0),  # gpt2-xl's width, the default grid (250 groups: one each)
    (256, 64, "float32", 2, 300.0)])     # a mean of 100 deviations: the variance in two passes keeps it
def test_head_on_webgpu(rng, C, V, dtype, blocks, mean):
    """Every logit written, equal to layernorm then lm_head; the inputs untouched."""
    from tinygpt2.runtime.webgpu import run_kernel

    ins = inputs(rng, C, V, dtype, mean)
    func = K.make_lm_head_decode(V, C, dtype, 1e-5, WEBGPU_MAX_LANES, blocks=blocks)
    *after, logits = run_kernel(func, [*ins, np.full((1, V), np.nan, np.float32)], dtype)
    for a, a0 in zip(after, ins):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_allclose(logits, K.lm_head_decode_ref(*ins), **TOL[dtype])


def test_gpt2_xl_head_is_a_persistent_grid_of_equal_shares():
    """gpt2-xl's 50257 rows in groups of 4 (a warp a row of 1600 halves, 7 loads a lane) over 524 blocks (4 an SM
    of an H100), 24 groups each."""
    assert pipe_grid(1600, 50257, "float16", 8, K.lm_head.HEAD_BLOCKS) == (8, 200, 32, 4, 12565, 524, 24)
    assert K.lm_head.head_blocks(50257, 1600, "float16") == 524


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cuda_head_loads_its_first_rows_then_waits_with_three_barriers(dtype):
    """With PDL (sm_90a): the first group's rows of wte prefetched and loaded, then the wait, then x; in float16
    three block barriers in all (x in shared memory, its statistics, h), none in the loop over the groups; the next
    group's rows loaded in 16-byte vectors while this one's are multiplied."""
    from tinygpt2 import targets as TG
    from tinygpt2.tvm_shim import pdl_tir_pipeline, tvm

    func = K.make_lm_head_decode(50257, 1600, dtype, 1e-5, 8, "exit")
    tgt = TG.make_target("cuda", "sm_90a")
    with tgt:
        ex = tvm.compile(tvm.IRModule({"main": func}), target=tgt, tir_pipeline=pdl_tir_pipeline())
    src = ex.mod.imports[0].inspect_source()
    body = src[src.rindex("__global__"):]                             # the kernel's definition
    body = body[body.index("{"):]
    wait, loop = body.index("griddepcontrol_wait();"), body.index("for (int it = 0;")
    vec = {"float16": "uint4", "float32": "float4"}[dtype]
    assert body.index("prefetch_global_L2((&(wte_ptr[") < body.index(f"= *({vec}*)(wte_ptr") < wait
    assert wait < body.index("(x_ptr +")                              # (its prefetch before the wait: an asm)
    if dtype == "float16":          # (float32: a row's 64 lanes are two warps, whose sums meet in shared memory)
        assert body.count("__syncthreads();") == 3 and "__syncthreads();" not in body[loop:]
    assert body[loop:].count(f"*({vec}*)(wte_ptr") == 7                 # 200 vectors over 32 lanes / 400 over 64


@pytest.mark.parametrize("C,V,dtype,blocks", [(48, 100, "float32", 3), (64, 37, "float16", 5), (1600, 1000, "float16", 7)])
def test_greedy_tail_on_webgpu_picks_numpys_argmax_from_the_blocks_candidates(rng, C, V, dtype, blocks):
    """decode_greedy's tail: the head with argmax leaves each block's best logit and the lowest id holding it
    (lm_head_partials_ref), every logit still written; make_argmax_advance_gpu(parts) picks among them numpy's
    argmax of all the logits -- the lowest id on a tie, here between three equal rows in different blocks -- and
    feeds it to the next step (advance_ref)."""
    from tinygpt2.kernels.lm_head import lm_head_partials_ref
    from tinygpt2.runtime.webgpu import run_kernel

    x, gamma, beta, wte = inputs(rng, C, V, dtype)
    _, _, _, rows, _, nb, _ = pipe_grid(C, V, dtype, WEBGPU_MAX_LANES, blocks)
    # the largest logit three times, in blocks 1, 2 and 0 (its second group): numpy's pick is the first, in block 1
    tied = [rows + 1, 2 * rows + 1, nb * rows + 1]
    assert [(j // rows) % nb for j in tied] == [1, 2, 0] and tied[-1] < V
    wte[tied] = 0.1 * np.sign(K.layernorm_ref(x, gamma, beta)[0])     # 0.1 * sum |h|: far above the others
    head = K.make_lm_head_decode(V, C, dtype, 1e-5, WEBGPU_MAX_LANES, blocks=blocks, argmax=True)
    *_, logits, best, best_id = run_kernel(head, [x, gamma, beta, wte, np.full((1, V), np.nan, np.float32),
                                                  np.zeros((1, nb), np.float32), np.zeros((1, nb), np.int32)], dtype)
    np.testing.assert_allclose(logits, K.lm_head_decode_ref(x, gamma, beta, wte), **TOL[dtype])
    want_best, want_id = lm_head_partials_ref(logits, nb, rows)
    np.testing.assert_array_equal(best, want_best)
    np.testing.assert_array_equal(best_id, want_id)
    P = 16
    ids, pos, history = np.array([5], np.int32), np.array([P - 2], np.int32), rng.integers(0, V, P + 1).astype(np.int32)
    *_, ids2, pos2, history2, nxt = run_kernel(K.make_argmax_advance_gpu(V, P, 256, nb),
                                               [best, best_id, ids, pos, history, np.full(1, -1, np.int32)])
    assert nxt[0] == np.argmax(logits[0]) == tied[0]
    for got, want in zip((ids2, pos2, history2), K.advance_ref(nxt, ids, pos, history)):
        np.testing.assert_array_equal(got, want)
