"""`explain`: every kernel once per function, the rule that scheduled it, its launch, its code; a diff
between rule lists; one-line CLI errors. No GPU needed: nothing runs, code is only generated."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from tinygpt2.cli import main
from tinygpt2.compile import build_scheduled
from tinygpt2.config import GPT2Config
from tinygpt2.errors import ExplainError
from tinygpt2.explain import _select, diff, explain
from tinygpt2.model import build_module
from tinygpt2.runtime.plan import build_plan

CFG = GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=1, n_head=4)


@pytest.fixture(scope="module")
def plans():
    """function -> Counter(kernel -> launches), from the unscheduled module (scheduling changes no call)."""
    mod = build_module(CFG, "float32")
    return {fn: Counter(ln.kernel for ln in build_plan(mod, fn).launches) for fn in ("prefill", "decode")}


@pytest.fixture(scope="module")
def explained():
    """target -> Explanation of the default rules, with the generated code of every kernel."""
    return {t: explain(CFG, t, rules="default", show=("code",)) for t in ("cuda", "webgpu", "metal")}


@pytest.mark.parametrize("target", ["cuda", "webgpu", "metal"])
def test_every_kernel_once_per_function(explained, plans, target):
    e = explained[target]
    for fn, calls in plans.items():
        rows = [k for k in e.kernels if k.function == fn]
        assert len({k.name for k in rows}) == len(rows) == len(calls)  # each kernel once ...
        assert {k.name: k.calls for k in rows} == calls                  # ... with its launches
    assert all(k.rule for k in e.kernels)                               # a GPU kernel no rule took would fail
    assert all(k.launches for k in e.kernels)
    assert set(e.code) == {k.name for k in e.kernels}                   # code for every kernel


def test_rules_match_build_scheduled(explained):
    sched, _, _ = build_scheduled(CFG, "cuda", "float32", "default")
    # explain covers prefill and decode; decode_greedy adds only its two tail kernels, decode_sample one
    assert set(sched.rule_of) - set(explained["cuda"].rule_of) == {"argmax_n1", "advance_n1", "sample_advance_n1"}
    assert explained["cuda"].rule_of == {k: sched.rule_of[k] for k in explained["cuda"].rule_of}
    assert explained["cuda"].rule_of["linear_qkv"] == "matmul"


def test_launch_configuration_from_the_scheduled_ir(explained):
    k = {k.name: k for k in explained["cuda"].kernels}
    assert "n" in k["linear_qkv"].grid_text()                           # symbolic in the new tokens
    assert "m" in k["attn_scores"].grid_text()                          # ... and in the sequence length
    assert k["attn_scores_n1"].grid_text().isdigit()                    # decode: the whole cache, static
    assert k["linear_qkv_n1"].grid_text().isdigit()                     # decode: n = 1, a number
    assert k["linear_qkv"].launches[0].shared_bytes > 0                 # matmul tiles in shared memory
    assert k["linear_qkv"].vector and k["linear_qkv"].unroll
    assert len(k["kv_append"].launches) == 1                            # K and V in one device kernel
    table = explained["cuda"].table()
    assert table.splitlines()[0].split() == ["function", "kernel", "calls", "rule", "grid", "block", "shared",
                                             "mem", "vector", "unroll"]
    assert len(table.splitlines()) == 2 + len(explained["cuda"].kernels)


def test_generated_code(explained):
    assert "__global__" in explained["cuda"].code["linear_qkv"]
    assert "linear_qkv_kernel" in explained["cuda"].code["linear_qkv"]
    assert "@compute" in explained["webgpu"].code["layernorm_n1"]
    assert "kernel void" in explained["metal"].code["linear_qkv"]       # Metal's matmul: no crash, SIMT tiles
    assert explained["cuda"].code["kv_append"].count("__global__") == 1


def test_rocm_assembly_without_rocm():
    e = explain(CFG, "rocm", kernels=["layernorm"], functions="decode", show=("code", "ir"))
    assert [k.name for k in e.kernels] == ["layernorm_n1"]
    assert "layernorm_n1_kernel" in e.code["layernorm_n1"] and "s_" in e.code["layernorm_n1"]   # GCN assembly
    assert "define" in e.ir["layernorm_n1"]


def test_diff_none_vs_default(explained):
    none = explain(CFG, "cuda", rules="none")
    text = diff(none, explained["cuda"])
    assert "-prefill linear_qkv: rule=fallback" in text
    assert "+prefill linear_qkv: rule=matmul" in text
    assert diff(explained["cuda"], explained["cuda"]) == ""


def test_kernel_selection_and_bad_views(explained):
    picked = _select(explained["cuda"].kernels, ["linear_qkv"])
    assert [k.name for k in picked] == ["linear_qkv", "linear_qkv_n1"]
    with pytest.raises(ExplainError, match="no kernel 'nope'"):
        _select(explained["cuda"].kernels, ["nope"])
    with pytest.raises(ExplainError, match="LLVM IR"):
        explain(CFG, "cuda", show=("ir",))


def _one_line_error(capsys, argv, *words):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0]


def test_cli_bad_target_or_rule_is_one_line(capsys, tmp_path):
    _one_line_error(capsys, ["explain", "--model", "random:gpt2", "--target", "tpu"], "unknown target", "tpu")
    _one_line_error(capsys, ["explain", "--model", "random:gpt2", "--target", "cuda", "--rules", "gemvv"],
                    "unknown rule", "gemvv")
    _one_line_error(capsys, ["explain", "--model", "random:gpt2", "--target", "cuda", "--diff-rules", "nope"],
                    "unknown rule", "nope")
    _one_line_error(capsys, ["explain", "--model", "random:gpt9", "--target", "cuda"], "gpt9")
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    _one_line_error(capsys, ["explain", "--model", str(tmp_path), "--target", "cuda", "--rules", "gemv,reduction"],
                    "scheduled kernel(s)", "gelu")               # on a GPU, an unscheduled kernel is an error


def test_cli_json_from_a_local_config(tmp_path, plans):
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))     # explain needs no weights
    r = subprocess.run([sys.executable, "-m", "tinygpt2", "explain", "--model", str(tmp_path), "--target", "cuda",
                        "--format", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["target"] == "cuda" and out["rules"][0] == "matmul"
    for fn, calls in plans.items():
        assert Counter({k["name"]: k["calls"] for k in out["kernels"] if k["function"] == fn}) == calls
    assert {k["name"]: k["rule"] for k in out["kernels"]}["linear_qkv"] == "matmul"


def test_a_hub_id_offline_is_the_one_line_offline_error(monkeypatch):
    """explain needs a Hub model's config.json only; offline, it fails as generate does (no retries)."""
    import time

    from tinygpt2.errors import OfflineError
    from tinygpt2.explain import model_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(OfflineError, match="not in the local cache"):
        model_config("tinygpt2-tests/no-such-model-xyz")
    assert time.perf_counter() - t < 10


def test_dynamic_shared_memory_is_counted_once_and_clusters_are_shown():
    """A kernel's shared memory per block is its static allocations plus the launch's dynamic bytes; TVM's merged
    dynamic buffer (scope shared.dyn) in the lowered kernel is those same bytes, not more. decode-cluster's kernel
    (kernels/decode_cluster.py) takes 48 rows of W' and its keys' K and V rows dynamically, ~5 KB statically."""
    from tinygpt2.rules import GPU_FUSED

    cfg = GPT2Config(vocab_size=50257, n_positions=64, n_embd=128, n_layer=1, n_head=2)     # heads 64 wide
    e = explain(cfg, "cuda", "float16", ["decode-cluster", *GPU_FUSED], arch="sm_90a", functions=("decode",),
                kernels=["decode_cluster"])
    (launch,) = {k.name: k for k in e.kernels}["decode_cluster_n1"].launches
    dynamic = (48 * 128 + 2 * (64 // 4) * 64) * 2
    assert dynamic < launch.shared_bytes < dynamic + 8 * 1024, launch.shared_bytes
    assert launch.cluster == 4 and e.kernels[0].grid_text() == "8 in clusters of 4"      # 2 heads x 4 blocks
