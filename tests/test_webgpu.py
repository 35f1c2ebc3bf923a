"""The WebGPU target end to end, run through wgpu on whatever adapter the machine has (Mesa's
llvmpipe in CI). No adapter is a failure here, not a skip: CI installs one (.ci/run)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import tinygpt2
from tinygpt2.runtime.webgpu import open_device

PROMPT = "The quick brown fox jumps over the lazy dog. It"


def rel_err(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().numpy()


def test_an_adapter_exists():
    _, adapter, _ = open_device("float32")
    assert adapter.info["device"]


@pytest.fixture(scope="module", params=["default", "fused"])
def gpu(request, tiny_checkpoint):
    """default: the plain graph, every kernel DLight's; fused: decode's hand-scheduled fused kernels
    (rules.FusedDecode: 5 calls a layer instead of 10)."""
    return tinygpt2.load(str(tiny_checkpoint), target="webgpu", rules=request.param)


def test_logits_match_transformers_prefill_and_decode(gpu, tiny_checkpoint, hf_reference):
    hf = hf_reference(tiny_checkpoint)
    ids = gpu.tokenizer.encode(PROMPT)
    follow = list(range(500, 516))
    want = hf_logits(hf, ids + follow)
    assert rel_err(gpu.prefill(ids), want[len(ids) - 1]) < 1e-4
    for step, token in enumerate(follow):
        assert rel_err(gpu.decode(token), want[len(ids) + step]) < 1e-4, f"decode step {step}"


def test_greedy_ids_equal_the_cpu_target(gpu, tiny_checkpoint):
    cpu = tinygpt2.load(str(tiny_checkpoint), target="llvm")
    ids = gpu.tokenizer.encode(PROMPT)
    assert gpu.generate(ids, max_new_tokens=24).ids == cpu.generate(ids, max_new_tokens=24).ids


def test_greedy_on_the_gpu_is_the_host_argmax_in_one_submit(gpu):
    """decode_greedy's 16 steps (argmax on the GPU, fed to the next step there) in one submit give
    the ids of a host argmax loop over `decode`'s logits."""
    ids = gpu.tokenizer.encode(PROMPT)
    token = int(np.argmax(gpu.prefill(ids)))
    host = []
    for _ in range(20):
        host.append(int(np.argmax(gpu.decode(host[-1] if host else token))))
    gpu.prefill(ids)
    submits = []
    queue = gpu.executor.device.queue
    original = queue.submit
    queue.submit = lambda bufs: (submits.append(len(bufs)), original(bufs))[1]
    try:
        dev = gpu.executor.greedy(token, 16) + gpu.executor.greedy(host[15], 4)
    finally:
        queue.submit = original
    assert dev == host
    assert submits == [1, 1]
    assert gpu.executor.cache.length == len(ids) + 20


def test_sampling_on_the_gpu_draws_only_what_the_host_sampler_keeps(gpu):
    """decode_sample (kernels/sample.py) runs 24 steps, each token drawn on the GPU and fed to the next
    step there. Replayed through `decode`, every token is one that temperature, top-k and top-p keep
    for the logits it was drawn from (runtime/sampling.keep, float64 on the host)."""
    from tinygpt2.runtime.sampling import keep

    ids = gpu.tokenizer.encode(PROMPT)
    out = gpu.generate(ids, max_new_tokens=24, temperature=1.5, top_k=40, top_p=0.8, seed=1, sample_on="device")
    assert len(out.ids) == 24
    logits = gpu.prefill(ids)
    for token in out.ids:
        kept = keep(logits, 1.5, 40, 0.8)[0]
        assert token in kept and 1 < kept.size <= 40              # a real choice at every step
        logits = gpu.decode(token)


def test_sampling_on_the_gpu_is_reproducible_and_top_k_1_is_greedy(gpu):
    ids = gpu.tokenizer.encode(PROMPT)
    run = lambda **kw: gpu.generate(ids, max_new_tokens=20, temperature=0.8, sample_on="device", **kw).ids  # noqa: E731
    assert run(seed=7) == run(seed=7) != run(seed=8)
    assert run(seed=7, top_k=1) == gpu.generate(ids, max_new_tokens=20).ids


def test_auto_samples_on_the_host_on_a_cpu_adapter(gpu):
    """llvmpipe is a CPU: there `auto` keeps sampling on the host, which is faster there (and so gives
    the host sampler's tokens for a seed)."""
    assert gpu.executor.samples_on_device and not gpu.executor.samples_on_device_by_default
    ids = gpu.tokenizer.encode(PROMPT)
    auto, host = (gpu.generate(ids, max_new_tokens=12, temperature=0.8, top_k=50, seed=3, sample_on=where).ids
                  for where in ("auto", "host"))
    assert auto == host


def test_one_submit_per_step_and_every_launch_dispatched(gpu):
    counts = gpu.executor.dispatches_per_step
    plan = gpu.compiled.plans["decode"]
    fused = gpu.compiled.fused_decode
    per_layer, head = (5, 1) if fused else (10, 2)          # the head: ln_f and lm_head, or the two as one (fused)
    assert len(plan.launches) == 1 + per_layer * gpu.config.n_layer + head     # embedding ... the head
    # one or more dispatches per launch of the plan (a kernel may lower to several)
    assert counts["decode"] >= len(plan.launches)
    submits = []
    queue = gpu.executor.device.queue
    original = queue.submit
    queue.submit = lambda bufs: (submits.append(len(bufs)), original(bufs))[1]
    try:
        gpu.prefill([1, 2, 3])
        gpu.decode(4)
    finally:
        queue.submit = original
    assert submits == [1, 1]


@pytest.mark.parametrize("rules", ["default", "fused"])
def test_hub_layout_other_shapes_to_the_end_of_the_context(tiny_checkpoint_hub_layout, hf_reference, rules):
    m = tinygpt2.load(str(tiny_checkpoint_hub_layout), target="webgpu", rules=rules)
    hf = hf_reference(tiny_checkpoint_hub_layout)
    ids = list(range(2000, 2050))
    want = hf_logits(hf, ids + list(range(60, 74)))
    assert rel_err(m.prefill(ids), want[len(ids) - 1]) < 1e-4
    for step in range(14):                                   # to n_positions = 64
        assert rel_err(m.decode(60 + step), want[len(ids) + step]) < 1e-4


@pytest.mark.parametrize("rules", ["default", "fused"])
def test_float16_within_2e_2(tiny_checkpoint, hf_reference, rules):
    """fused: the weights with ln_1 / ln_2 folded into c_attn / c_fc, rounded to float16 once folded."""
    m = tinygpt2.load(str(tiny_checkpoint), target="webgpu", dtype="float16", rules=rules)
    assert m.compiled.folded_layernorms == (rules == "fused")
    hf = hf_reference(tiny_checkpoint)
    ids = m.tokenizer.encode(PROMPT)
    want = hf_logits(hf, ids + [7, 8])
    assert rel_err(m.prefill(ids), want[len(ids) - 1]) < 2e-2
    assert rel_err(m.decode(7), want[len(ids)]) < 2e-2


def test_cli_generate_on_webgpu(tiny_checkpoint):
    r = subprocess.run([sys.executable, "examples/generate.py", "--model", str(tiny_checkpoint), "--target", "webgpu",
                        "--prompt", "Hello", "--max-new-tokens", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello")
    assert "WebGPU adapter:" in r.stderr and "decode" in r.stderr
