"""The step-through executor (runtime/step.py) on llvm and webgpu: every launch of the plan once, in
order; every intermediate equal to the numpy reference (tinygpt2/reference.py); the executor left
exactly as after prefill/decode; and `tinygpt2 step` on the command line."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import tinygpt2
from tinygpt2.errors import GenerationError, StepError
from tinygpt2.reference import Reference
from tinygpt2.runtime.step import compare, step_through

PROMPT = "The quick brown fox jumps over the lazy dog. It"
TOL = 1e-4                       # float32: relative to each tensor's largest value


def rel_err(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module", params=["llvm", "webgpu"])
def model(request, tiny_checkpoint):
    """DLight's own list, the graph of ten launches a layer (load's default, `auto`, takes fused on WebGPU: the
    tests at the end step through that one)."""
    return tinygpt2.load(str(tiny_checkpoint), target=request.param, rules="default", progress=False)


@pytest.fixture(scope="module")
def fresh(model, tiny_checkpoint):
    """A second model of the same target, loaded from the compile cache, never stepped through."""
    m = tinygpt2.load(str(tiny_checkpoint), target=model.compiled.target, rules="default", progress=False)
    assert m.compiled.from_cache
    return m


def check_against_reference(steps, plan, values):
    assert [(s.index, s.name, s.kernel) for s in steps] == [(i, ln.name, ln.kernel)
                                                            for i, ln in enumerate(plan.launches)]
    assert len({s.name for s in steps}) == len(steps)                      # each launch exactly once
    assert set(values) == {s.name for s in steps}                          # the reference uses the same names
    for s in steps:
        err = compare(s, values)
        assert err.rel < TOL, f"{s.name} ({s.kernel}): {err}"


def test_prefill_every_launch_once_in_order_and_equal_to_numpy(model, fresh):
    ids = model.tokenizer.encode(PROMPT)
    steps = list(step_through(model, ids))
    check_against_reference(steps, model.compiled.plans["prefill"],
                            Reference.of(model)
                            .prefill(ids))
    # final logits: exactly what a plain prefill gives
    assert steps[-1].name == "logits" and steps[-1].output.shape == (1, model.config.vocab_size)
    np.testing.assert_array_equal(steps[-1].output[0], fresh.prefill(ids))
    assert model.executor.cache.length == len(ids)
    for s in steps:                     # what the step shows: the scheduled kernel and its launch
        assert s.grid and re.search(rf"def {s.kernel}[(\[]", s.script), s.name    # [: Python 3.12's def f[n](
        assert s.env == {"n": len(ids), "m": len(ids)}
    # the stepped model's scripts (fresh compile) and the cached model's (kernel_scripts.json) agree
    assert model.compiled.kernel_scripts == fresh.compiled.kernel_scripts


def test_decode_continues_after_stepping_through_prefill(model, tiny_checkpoint, hf_reference):
    ids = model.tokenizer.encode(PROMPT)
    follow = list(range(500, 508))
    want = hf_logits(hf_reference(tiny_checkpoint), ids + follow)
    steps = list(step_through(model, ids))
    assert rel_err(steps[-1].output[0], want[len(ids) - 1]) < TOL
    for k, token in enumerate(follow):
        assert rel_err(model.decode(token), want[len(ids) + k]) < TOL, f"decode step {k}"


def test_stepping_through_decode(model, fresh):
    ids = model.tokenizer.encode(PROMPT)
    ref = Reference.of(model)
    ref.prefill(ids)
    model.prefill(ids)
    fresh.prefill(ids)
    for k, token in enumerate([500, 501]):
        steps = list(step_through(model, token, "decode"))
        values = ref.decode(token)
        check_against_reference(steps, model.compiled.plans["decode"], values)
        assert all(s.kernel.endswith("_n1") for s in steps)
        # the launch that appends K, V (h0_kv; on a GPU the fused h0_attn) shows the filled positions
        kv = next(s for s in steps if s.name in ("h0_kv", "h0_attn") and len(s.outputs) > 1)
        assert kv.outputs[-2].shape[1] == len(ids) + k + 1
        np.testing.assert_array_equal(steps[-1].output[0], fresh.decode(token))
        assert model.executor.cache.length == len(ids) + k + 1
    assert rel_err(model.decode(502), ref.decode(502)["logits"][0]) < TOL                 # and decode goes on


def test_stop_at_and_stopping_early_leave_no_half_written_sequence(model):
    ids = model.tokenizer.encode(PROMPT)
    steps = list(step_through(model, ids, stop_at="h1_qkv"))
    assert [s.name for s in steps][-2:] == ["h1_ln_1", "h1_qkv"]
    assert model.executor.cache.length == 0
    with pytest.raises(GenerationError, match="before prefill"):
        model.decode(1)
    assert list(step_through(model, ids, stop_at="causal_softmax"))[-1].name == "h0_probs"   # a kernel name
    model.prefill(ids)
    gen = step_through(model, ids)               # leaving the loop part-way resets too
    next(gen)
    gen.close()
    assert model.executor.cache.length == 0
    # bad arguments raise at the call, before anything runs
    with pytest.raises(StepError, match="h0_qkv"):
        step_through(model, ids, stop_at="h9_nope")
    with pytest.raises(StepError):               # a decode kernel is not in prefill
        step_through(model, ids, stop_at="linear_qkv_n1")
    with pytest.raises(GenerationError):
        step_through(model, 3, "decode")         # nothing to continue


@pytest.mark.parametrize("target,rules", [("llvm", "default"), ("webgpu", "default"), ("webgpu", "fused")])
def test_other_shapes_to_the_end_of_the_context(target, rules, tiny_checkpoint_hub_layout):
    # 3 heads, 64 positions; webgpu "fused": decode's fused kernels, checked launch by launch too
    m = tinygpt2.load(str(tiny_checkpoint_hub_layout), target=target, rules=rules, progress=False)
    ref = Reference.of(m)
    ids = list(range(2000, 2060))
    check_against_reference(list(step_through(m, ids)), m.compiled.plans["prefill"], ref.prefill(ids))
    for token in range(60, 64):
        check_against_reference(list(step_through(m, token, "decode")), m.compiled.plans["decode"], ref.decode(token))
    assert m.executor.cache.length == 64


def tinygpt2_cli(*args):
    return subprocess.run([sys.executable, "-m", "tinygpt2", "step", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_a_line_per_launch(tiny_checkpoint):
    r = tinygpt2_cli("--model", str(tiny_checkpoint), "--prompt", "Hello there", "--decode-tokens", "1",
                     "--show-script")
    assert r.returncode == 0, r.stderr
    plans = tinygpt2.load(str(tiny_checkpoint), progress=False).compiled.plans            # llvm, from the cache
    n = len(plans["prefill"].launches) + len(plans["decode"].launches)
    rows = [line for line in r.stdout.splitlines() if line.endswith(("  OK", "  FAIL"))]
    assert len(rows) == n and all(row.endswith("OK") for row in rows)
    assert rows[2].split()[:3] == ["2", "h0_qkv", "linear_qkv"]
    assert f"{n} launches, 0 failed" in r.stdout
    assert re.search(r"def linear_qkv[(\[]", r.stdout) and "def linear_qkv_n1(" in r.stdout


def test_cli_stop_at_prints_the_kernel_and_values(tiny_checkpoint):
    # a decode-only kernel (GPU targets' fused attention): the command steps through the prefill and
    # one decode step to reach it
    r = tinygpt2_cli("--model", str(tiny_checkpoint), "--target", "webgpu", "--rules", "fused", "--prompt", "Hello",
                     "--stop-at", "decode_attention_n1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "stopped after decode launch 2 h0_attn: kernel decode_attention_n1" in out
    assert re.search(r"def decode_attention_n1[(\[]", out) and "ours " in out and "numpy " in out
    assert "h1_" not in out.split("-- decode")[1]                           # nothing after the stop
    assert " wg of " in out                                                 # WebGPU: workgroups x threads


def test_cli_bad_stop_at_is_one_line(tiny_checkpoint):
    r = tinygpt2_cli("--model", str(tiny_checkpoint), "--stop-at", "h9_nope")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "h9_nope" in lines[0] and "h0_qkv" in lines[0] and "layernorm" in lines[0]


def test_stepping_through_fused_webgpu_prefill_and_decode(tiny_checkpoint):
    """With `fused` the model takes ln_1 / ln_2 folded into c_attn / c_fc: prefill's h{i}_ln_1 and h{i}_ln_2
    are x normalized only (kernel `normalize`), decode's are inside h{i}_qkv and h{i}_fc_gelu; every
    launch still matches the numpy reference, which computes from Hugging Face's unfolded weights."""
    model = tinygpt2.load(str(tiny_checkpoint), target="webgpu", rules="fused", progress=False)
    assert model.compiled.folded_layernorms and model.compiled.fused_decode
    ids = model.tokenizer.encode(PROMPT)
    ref = Reference.of(model)
    steps = list(step_through(model, ids))
    assert {s.kernel for s in steps if s.name in ("h0_ln_1", "h1_ln_2")} == {"normalize"}
    check_against_reference(steps, model.compiled.plans["prefill"], ref.prefill(ids))
    steps = list(step_through(model, 500, "decode"))
    assert not any(s.name.endswith(("_ln_1", "_ln_2")) for s in steps)
    check_against_reference(steps, model.compiled.plans["decode"], ref.decode(500))
