"""tinygpt2's own CPU rules (rules.py: DotProducts, RowReduction), each kernel they schedule against numpy.

The `tuned` CPU list puts them around DLight's: end to end it gives the same logits as `default`
(test_ablate.py's preset test); here, which kernels each rule takes and what the schedule computes."""

import numpy as np
import pytest

from tinygpt2 import kernels as K
from tinygpt2.rules import DotProducts, RowReduction, WeightedRows
from tinygpt2.targets import make_target
from tinygpt2.tvm_shim import tvm

TGT = make_target("llvm")


def _scheduled(rule, func):
    with TGT:
        return rule.apply(func, TGT, False)


def _run(sch, arrays, out_shape):
    ex = tvm.compile(sch.mod, target=TGT)
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in arrays] + [tvm.runtime.empty(out_shape, "float32", dev)]
    ex[sch.mod.get_global_vars()[0].name_hint](*args)
    return args[-1].numpy()


H, D, P = 2, 16, 32


def _decode_cache(pos, seed=0):
    """A [H, P, D] cache whose rows past `pos` are NaN, as decode's stale rows may be."""
    cache = np.random.default_rng(seed).standard_normal((H, P, D)).astype(np.float32)
    cache[:, pos + 1:] = np.nan
    return cache


@pytest.mark.parametrize("row_pairs", [True, False])
@pytest.mark.parametrize("seq_len, n", [(1, 1), (None, 1), (None, 7), (None, 33), (None, 34)])
def test_dot_products_linear_matches_numpy(seq_len, n, row_pairs):
    """x @ W.T + b with W [out, in]: each output a dot product along a row, 16 lanes of k a vector; for prefill's
    symbolic n, the column tiles outside the rows, and with row_pairs n padded to an even count (odd n too) and
    tiles of 2 rows x 4 columns."""
    sch = _scheduled(DotProducts(row_pairs=row_pairs), K.make_linear(64, 40, "float32", seq_len=seq_len))
    assert sch is not None
    assert "T.vectorized(T.int64(16))" in sch.mod.script() and "T.parallel" in sch.mod.script()
    if seq_len is None:      # the parallel loop is the column tiles': 40 = 5 tiles of 8, or 10 of 4 with pairs
        assert f"T.parallel(T.int64({10 if row_pairs else 5}))" in sch.mod.script()
        assert ("x_pad" in sch.mod.script()) == row_pairs                    # x padded to an even row count
    rng = np.random.default_rng(n)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, 64), (40, 64), (40,)))
    np.testing.assert_allclose(_run(sch, (x, w, b), (n, 40)), K.linear_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_dot_products_lm_head_matches_numpy():
    sch = _scheduled(DotProducts(), K.make_lm_head(100, 32, "float32"))
    assert sch is not None
    rng = np.random.default_rng(0)
    x, wte = rng.standard_normal((5, 32)).astype(np.float32), rng.standard_normal((100, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(sch, (x, wte), (1, 100)), K.lm_head_ref(x, wte), rtol=1e-5, atol=1e-5)


def test_dot_products_declines_what_it_cannot_vectorize_along_rows():
    assert _scheduled(DotProducts(), K.make_attn_values(2, 16, 32, "float32")) is None   # keys are V's rows
    assert _scheduled(DotProducts(), K.make_linear(24, 8, "float32")) is None            # 24: no whole 16 lanes


def test_row_reduction_leaves_a_one_row_layernorm_to_plain_loops():
    """DLight's CPU Reduction would sum the row again for each of its outputs (O(C^2)); one row: declined.
    Many rows (prefill): DLight's schedule, parallel over the rows."""
    assert _scheduled(RowReduction(), K.make_layernorm(64, "float32", seq_len=1)) is None
    sch = _scheduled(RowReduction(), K.make_layernorm(64, "float32"))
    assert sch is not None and "T.parallel" in sch.mod.script()


@pytest.mark.parametrize("n, m", [(1, 1), (5, 9), (7, 32)])
def test_dot_products_prefill_scores_match_numpy(n, m):
    """scores[h, i, j] = q[i, h] . k[h, j] for the first m rows of the cache: (head, query) the parallel loop,
    the keys a loop inside it (both symbolic)."""
    sch = _scheduled(DotProducts(), K.make_attn_scores(H, D, P, "float32"))
    assert sch is not None and "T.parallel" in sch.mod.script()
    rng = np.random.default_rng(m)
    qkv, k_cache = rng.standard_normal((n, 3 * H * D)).astype(np.float32), rng.standard_normal((H, P, D)).astype(np.float32)
    np.testing.assert_allclose(_run(sch, (qkv, k_cache), (H, n, m)), K.attn_scores_ref(qkv, k_cache, m),
                               rtol=1e-5, atol=1e-5)


def test_dot_products_decode_scores_over_the_cache_up_to_pos():
    """scores[h, 0, j] = q[h] . k[h, j] for j <= pos, 0 beyond (the rows there hold NaN)."""
    sch = _scheduled(DotProducts(), K.make_attn_scores_decode(H, D, P, "float32"))
    assert sch is not None
    pos, k_cache = 9, _decode_cache(9)
    qkv = np.random.default_rng(1).standard_normal((1, 3 * H * D)).astype(np.float32)
    got = _run(sch, (qkv, k_cache, np.array([pos], np.int32)), (H, 1, P))
    want = np.zeros((H, 1, P), np.float32)
    want[:, 0, :pos + 1] = np.einsum("hd,hjd->hj", qkv[0, :H * D].reshape(H, D), k_cache[:, :pos + 1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 5])
def test_weighted_rows_prefill_values_match_numpy(n):
    """out[i, h*D + d] = sum_j p[h, i, j] v[h, j, d]: one vector per row of V, parallel over (head, query)."""
    sch = _scheduled(WeightedRows(), K.make_attn_values(H, D, P, "float32"))
    assert sch is not None and "T.vectorized(T.int64(16))" in sch.mod.script()
    m = 11
    rng = np.random.default_rng(n)
    probs, v_cache = rng.random((H, n, m)).astype(np.float32), rng.standard_normal((H, P, D)).astype(np.float32)
    want = np.einsum("hij,hjd->ihd", probs, v_cache[:, :m]).reshape(n, H * D)
    np.testing.assert_allclose(_run(sch, (probs, v_cache), (n, H * D)), want, rtol=1e-5, atol=1e-5)


def test_weighted_rows_decode_values_ignore_the_rows_past_pos():
    sch = _scheduled(WeightedRows(), K.make_attn_values_decode(H, D, P, "float32"))
    assert sch is not None
    pos, v_cache = 6, _decode_cache(6, seed=2)
    probs = np.zeros((H, 1, P), np.float32)
    probs[:, 0, :pos + 1] = np.random.default_rng(3).random((H, pos + 1))
    got = _run(sch, (probs, v_cache, np.array([pos], np.int32)), (1, H * D))
    want = np.einsum("hj,hjd->hd", probs[:, 0, :pos + 1], v_cache[:, :pos + 1]).reshape(1, H * D)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weighted_rows_declines_dot_products():
    assert _scheduled(WeightedRows(), K.make_linear(64, 40, "float32")) is None     # k is W's row, not a row of W


def test_the_cpu_target_runs_a_thread_a_core():
    """TVM's thread pool, sized by targets.device("llvm") (tvm_shim.cpu_device) to the cores this process may
    use: TVM's own default halves the CPU count on x86 (assuming hyper-threads), one thread on a 2-core VM.
    TVM_NUM_THREADS, when the user sets it, is left to TVM. Fresh processes: a pool is sized once."""
    import os
    import subprocess
    import sys

    from tinygpt2.tvm_shim import _cores_here

    probe = ("from tinygpt2 import targets as TG; from tinygpt2.tvm_shim import tvm; TG.device('llvm'); "
             "print(tvm.get_global_func('runtime.NumThreads')())")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    threads = lambda extra: int(subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, check=True,
                                               capture_output=True, text=True).stdout.split()[-1])
    cores = _cores_here(sorted(os.sched_getaffinity(0)))
    if cores is None:
        pytest.skip("no CPU topology in sysfs here: TVM's default is kept")
    assert threads({}) == cores
    assert threads({"TVM_NUM_THREADS": "1"}) == 1


def test_tuned_takes_the_hand_scheduled_attention_for_prefill_only():
    """`flash-prefill` in the CPU list (in `tuned`): prefill's attention is one kernel,
    flash_attention.make_flash_attention_cpu (no rule's); decode's three stay the rules'. `hand-softmax` without
    it: prefill's causal softmax is attention.make_causal_softmax_cpu; with neither, it is the rules' too. And a
    GPU-only request (fused-decode's marker) given to a CPU list builds nothing for the GPU."""
    from tinygpt2.compile import build_scheduled, hand_kernels
    from tinygpt2.config import GPT2Config
    from tinygpt2.rules import FusedDecode, HandSoftmax

    cfg = GPT2Config(n_layer=1, n_embd=64, n_head=4, n_positions=32, vocab_size=100)
    rules = ["dot-products", "weighted-rows", "row-reduction"]
    sched, _, _ = build_scheduled(cfg, "llvm", "float32", "tuned")
    assert sched.rule_of["flash_attention"] == "hand-scheduled" and "causal_softmax" not in sched.rule_of
    assert (sched.rule_of["attn_scores_n1"], sched.rule_of["causal_softmax_n1"], sched.rule_of["attn_values_n1"]) == (
        "cpu-dot-products", "cpu-row-reduction", "cpu-weighted-rows")
    sched, _, _ = build_scheduled(cfg, "llvm", "float32", ["hand-softmax", *rules])
    assert sched.rule_of["causal_softmax"] == "hand-scheduled" and "flash_attention" not in sched.rule_of
    sched, _, _ = build_scheduled(cfg, "llvm", "float32", rules)
    assert sched.rule_of["causal_softmax"] == "cpu-row-reduction"
    assert hand_kernels("llvm", [FusedDecode(), HandSoftmax()])["hand"] == ("hand-softmax",)
