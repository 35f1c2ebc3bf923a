"""tinygpt2's own CPU rules (rules.py: DotProducts, RowReduction), each kernel they schedule against numpy.

The `tuned` CPU list puts them around DLight's: end to end it gives the same logits as `default`
(test_ablate.py's preset test); here, which kernels each rule takes and what the schedule computes."""

import numpy as np
import pytest

from tinygpt2 import kernels as K
from tinygpt2.rules import DotProducts, RowReduction
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


@pytest.mark.parametrize("seq_len, n", [(1, 1), (None, 1), (None, 7), (None, 33)])
def test_dot_products_linear_matches_numpy(seq_len, n):
    """x @ W.T + b with W [out, in]: each output a dot product along a row, 16 lanes of k a vector."""
    sch = _scheduled(DotProducts(), K.make_linear(64, 40, "float32", seq_len=seq_len))
    assert sch is not None
    assert "T.vectorized(T.int64(16))" in sch.mod.script() and "T.parallel" in sch.mod.script()
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
