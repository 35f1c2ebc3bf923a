"""`tinygpt2 ablate` and the rule presets it walks: the reports it writes, failed lists recorded as
rows, and every preset giving the default list's logits (on llvm, and on WebGPU through llvmpipe)."""

import csv

import numpy as np
import pytest

import tinygpt2
from tinygpt2 import ablate as A
from tinygpt2.cli import main
from tinygpt2.rules import presets

PNG = b"\x89PNG\r\n\x1a\n"
SHORT = dict(prompt_len=16, decode_tokens=4, repeats=1)
IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
FOLLOW = [632, 373, 257]


def rel_err(ours, ref):
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def logits(model: str, target: str, rules) -> np.ndarray:
    m = tinygpt2.load(model, target=target, rules=rules, progress=False)
    out = [m.prefill(IDS)] + [m.decode(t) for t in FOLLOW]
    return np.stack(out)


# First in the file: it compiles every preset into the session's cache, which the ablation tests
# below then load from instead of compiling again.
@pytest.fixture(scope="module")
def default_logits(tiny_checkpoint):
    return {t: logits(str(tiny_checkpoint), t, "default") for t in ("llvm", "webgpu")}


@pytest.mark.parametrize("target,preset", [("llvm", p) for p in presets("cpu")]
                         + [("webgpu", p) for p in presets("gpu")])
def test_every_preset_gives_the_default_logits(tiny_checkpoint, default_logits, target, preset):
    got = logits(str(tiny_checkpoint), target, preset)
    for step, (ours, ref) in enumerate(zip(got, default_logits[target])):
        assert rel_err(ours, ref) < 1e-4, f"{target} {preset}: step {step}"


def test_default_lists_order():
    assert A.default_lists("webgpu") == [
        "none", "matmul", "tiled-matmul", "gemv", "small-block-gemv", "low-batch-gemv", "reduction", "general-reduction", "rmsnorm",
        "transpose",
        "tensor-core-matmul", "tensor-core-matmul-async", "fused-decode", "hand-softmax", "flash-prefill", "default", "default-minus-matmul",
        "default-minus-gemv", "default-minus-reduction",
        "default-minus-general-reduction", "tuned", "fused"]
    assert A.default_lists("llvm") == ["none", "dot-products", "weighted-rows", "gemv", "reduction", "row-reduction",
                                       "hand-softmax", "flash-prefill", "default",
                                       "default-minus-gemv", "default-minus-reduction", "tuned"]
    assert sorted(A.default_lists("cuda")) == sorted(set(presets("gpu")) - {"auto"})   # auto: fused again
    assert A.rules_of("gemv", "webgpu") == ["gemv", "fallback"]
    assert A.rules_of("matmul+gemv", "webgpu") == ["matmul", "gemv"]


def test_ablate_writes_table_csv_and_charts(tiny_checkpoint, tmp_path):
    lists = ["none", "default", "gemv", "matmul+gemv"]       # the last has no fallback: fails on both targets
    result = A.ablate(str(tiny_checkpoint), ["llvm", "webgpu"], "float32", lists, out=tmp_path, **SHORT)
    for target in ("llvm", "webgpu"):
        rows = {r.rule_list: r for r in result.rows[target]}
        assert list(rows) == lists
        for name in ("none", "default", "gemv"):
            assert rows[name].ok, rows[name].error
            assert rows[name].prefill_tok_s > 0 and rows[name].decode_tok_s > 0
            assert sum(rows[name].kernels_per_rule.values()) == sum(rows["none"].kernels_per_rule.values())
        assert rows["none"].prefill_speedup == pytest.approx(1.0) and rows["none"].decode_speedup == pytest.approx(1.0)
        assert not rows["matmul+gemv"].ok and "RuleError" in rows["matmul+gemv"].error
        assert "\n" not in rows["matmul+gemv"].error
    assert result.rows["webgpu"][1].kernels_per_rule.get("matmul", 0) > 0       # default on a GPU: Matmul fired
    assert result.rows["llvm"][0].kernels_per_rule == {"unscheduled": sum(result.rows["llvm"][0].kernels_per_rule.values())}

    md = (tmp_path / "ablate.md").read_text()
    assert "## llvm" in md and "## webgpu" in md and "FAILED: RuleError" in md
    with open(tmp_path / "ablate.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert [r["status"] for r in table].count("failed") == 2
    assert {r["target"] for r in table} == {"llvm", "webgpu"}
    for name in ("ablate_llvm.png", "ablate_webgpu.png", "ablate_backends.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name


def test_cli_per_kernel_and_none_first(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["ablate", "--model", str(tiny_checkpoint), "--targets", "llvm", "--rule-lists", "default",
               "--prompt-len", "16", "--decode-tokens", "4", "--repeats", "1", "--rounds", "2", "--per-kernel",
               "--profile-repeats", "2", "--out", str(out)])
    assert rc == 0
    md = (out / "ablate.md").read_text()
    assert "Per-kernel time on llvm" in md and "| default | decode |" in md
    assert "measured 2 times, round-robin" in md
    with open(out / "ablate.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["rule_list"] for r in table] == ["none", "default"]                     # none added: the baseline
    assert all(len(r["decode_runs"].split(";")) == 2 for r in table)
    with open(out / "ablate_kernels.csv") as f:
        kernels = list(csv.DictReader(f))
    assert {r["step"] for r in kernels} == {"decode", "prefill"}
    assert (out / "ablate_llvm.png").read_bytes()[:8] == PNG
    assert not (out / "ablate_backends.png").exists()                             # one target: no comparison
    assert "| none |" in capsys.readouterr().out
    again = A.read(out)                                                           # back from the CSVs
    assert [r.rule_list for r in again.rows["llvm"]] == ["none", "default"] and again.rounds == 2
    assert again.rows["llvm"][1].decode_tok_s == pytest.approx(float(table[1]["decode_tok_s"]))
    assert {k for k, _, _ in again.rows["llvm"][1].profiles["decode"]} == \
        {r["kernel"] for r in kernels if r["rule_list"] == "default" and r["step"] == "decode"}
    assert A.to_markdown(again).splitlines()[:8] == md.splitlines()[:8]


def test_cli_rejects_a_target_that_cannot_run(capsys):
    assert main(["ablate", "--targets", "rocm"]) == 2
    assert "cannot run here" in capsys.readouterr().err
