"""The command line: it generates, and bad input gets one line on stderr and a non-zero exit."""

import shutil
import subprocess
import sys

import pytest


def tinygpt2(*args):
    return subprocess.run([sys.executable, "-m", "tinygpt2", *args], capture_output=True, text=True, timeout=600)


def assert_one_line_error(r, *words):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_streams_text_then_a_stats_line(tiny_checkpoint):
    r = tinygpt2("generate", "--model", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello") and len(r.stdout.strip()) > len("Hello")
    assert "prefill" in r.stderr and "tok/s" in r.stderr and "time to first token" in r.stderr


def test_examples_generate_is_the_same_command(tiny_checkpoint):
    r = subprocess.run([sys.executable, "examples/generate.py", "--model", str(tiny_checkpoint), "--prompt", "Hi",
                        "--max-new-tokens", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hi")


def test_unknown_target():
    assert_one_line_error(tinygpt2("generate", "--model", "random:gpt2", "--target", "tpu"), "unknown target", "tpu")


def test_missing_checkpoint_directory(tmp_path):
    assert_one_line_error(tinygpt2("generate", "--model", str(tmp_path / "nope")), "no such checkpoint directory")


def test_corrupt_safetensors(tiny_checkpoint, tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoint, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(tinygpt2("generate", "--model", str(d)), "model.safetensors")


def test_prompt_longer_than_the_context(tiny_checkpoint_hub_layout):
    r = tinygpt2("generate", "--model", str(tiny_checkpoint_hub_layout), "--prompt", "word " * 100)
    assert_one_line_error(r, "context", "64")
    assert r.stdout == ""                                     # the error, not the prompt echoed first


def test_generation_that_reaches_the_context_says_so(capsys, tiny_checkpoint_hub_layout):
    from tinygpt2.cli import main

    assert main(["generate", "--model", str(tiny_checkpoint_hub_layout), "--prompt", "word " * 60,
                 "--max-new-tokens", "50"]) == 0
    assert "stopped at the model's context of 64 tokens" in capsys.readouterr().err


def test_no_new_tokens_asked_for_runs_nothing(capsys, tiny_checkpoint_hub_layout):
    from tinygpt2.cli import main

    assert main(["generate", "--model", str(tiny_checkpoint_hub_layout), "--prompt", "Hi", "--max-new-tokens", "0"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hi\n" and "nothing run" in out.err and "tok/s" not in out.err


def test_prompt_escapes_only_newlines():
    """--prompt's \\n is a newline; other backslashes and non-ASCII text are the user's text, untouched
    (Python's unicode_escape codec garbled UTF-8 and failed on a lone \\x)."""
    from tinygpt2.cli import prompt_text

    assert prompt_text("JULIET: café\\nROMEO:") == "JULIET: café\nROMEO:"
    assert prompt_text("C:\\temp\\x and \\u") == "C:\\temp\\x and \\u"


def test_bad_dtype():
    assert_one_line_error(tinygpt2("generate", "--model", "random:gpt2", "--dtype", "int8"), "dtype", "int8")


def test_negative_max_new_tokens():
    assert_one_line_error(tinygpt2("generate", "--model", "random:gpt2", "--max-new-tokens", "-1"), "max-new-tokens")


def test_sampling_on_the_device_of_a_cpu_target():
    assert_one_line_error(tinygpt2("generate", "--model", "random:gpt2", "--temperature", "0.8", "--sample-on", "device"),
                          "--sample-on device", "GPU")


def test_commands_that_run_the_model_take_auto_and_explain_takes_default():
    from tinygpt2.cli import _parser
    for command in ("generate", "step", "bench"):
        assert _parser().parse_args([command]).rules == "auto", command
    assert _parser().parse_args(["explain"]).rules == "default"


def test_unknown_rule(tiny_checkpoint):
    assert_one_line_error(tinygpt2("generate", "--model", str(tiny_checkpoint), "--rules", "gemv,magic"), "magic")


def test_offline_hub_id_names_the_alternatives():
    r = tinygpt2("generate", "--model", "nobody-here/no-such-model-xyz")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "random:gpt2" in r.stderr


def test_lesson_one_runs():
    r = subprocess.run([sys.executable, "examples/01_one_kernel.py"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "general-reduction  schedules it" in r.stdout
    err = float(r.stdout.split("max |tvm - numpy| =")[1].split()[0])
    assert err < 1e-4


def test_a_transformers_peer_that_cannot_import_says_why():
    """Python started in the checkout's root finds its kernels/ folder as a top-level `kernels`, which
    transformers >= 5.25 imports as the Hub's package: the bench's peer then fails with a typed error that
    names the cause (the bench prints it on one line and keeps our own numbers), not an ImportError."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("from tinygpt2 import bench\n"
            "from tinygpt2.errors import PeerError\n"
            "try:\n"
            "    bench._import_hf()\n"
            "except PeerError as e:\n"
            "    print('PeerError:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PeerError: transformers imported this checkout's kernels/ folder"), r.stdout
    # and from anywhere else, the import works
    r = subprocess.run([sys.executable, "-c", "from tinygpt2 import bench; print(bench._import_hf()[2].__name__)"],
                       cwd=root.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "GPT2LMHeadModel", r.stderr


def _in_process_error(capsys, argv) -> str:
    """Run the CLI in this process (no interpreter start, no TVM import per case): the one stderr line of a
    bad-input error, with exit code 2 (an internal error would be 1)."""
    from tinygpt2.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert err[0].startswith("tinygpt2: error: ")
    return err[0]


# each rejected before any model is compiled (the machine's cache is not touched)
BAD_GENERATE = [
    (["--temperature", "nan"], "temperature"),
    (["--temperature", "inf"], "temperature"),
    (["--temperature", "-1"], "temperature"),
    (["--top-k", "0"], "top_k"),
    (["--top-p", "1.5"], "top_p"),
    (["--seed", "-1"], "seed"),
    (["--stop", ""], "stop string"),
    (["--target", "cuda", "--arch", "bogus"], "arch"),
    (["--arch", "bogus"], "LLVM knows no such CPU"),
    (["--target", "webgpu", "--arch", "sm_90a"], "does not apply"),
    (["--model", "random:gpt3"], "unknown preset"),
]


@pytest.mark.parametrize("flags, words", BAD_GENERATE, ids=[" ".join(f) for f, _ in BAD_GENERATE])
def test_bad_generate_flags(capsys, flags, words):
    assert words in _in_process_error(capsys, ["generate", "--model", "shakespeare", "--max-new-tokens", "2", *flags])


def test_cuda_without_a_gpu_fails_before_compiling(capsys, tmp_path, monkeypatch):
    from tinygpt2.tvm_shim import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA GPU: the error under test cannot happen")
    monkeypatch.setenv("TINYGPT2_CACHE", str(tmp_path))
    assert "no CUDA GPU" in _in_process_error(capsys, ["generate", "--model", "shakespeare", "--target", "cuda"])
    assert not any(tmp_path.iterdir())                        # nothing compiled, nothing cached


BAD_BENCH = [
    (["--decode-tokens", "0"], "decode tokens"),
    (["--decode-tokens", "-5"], "decode tokens"),
    (["--repeats", "0"], "repeats"),
    (["--prompt-lens", "abc"], "--prompt-lens"),
    (["--prompt-lens", "16,0"], "prompt length"),
    (["--peers", "bogus"], "--peers"),
    (["--dtypes", "int8"], "int8"),
    (["--profile-prefill-len", "0"], "--profile-prefill-len"),
    (["--model", "TINY"], "no room to decode"),             # a 64-token context: the 128-token decode prompt
    (["--profile", "--profile-prefill-len", "300"], "past shakespeare's context"),
    (["--dtype", "bogus"], "bogus"),                         # --dtype: the one-item form of --dtypes
]


@pytest.mark.parametrize("flags, words", BAD_BENCH, ids=[" ".join(f) for f, _ in BAD_BENCH])
def test_bad_bench_flags(capsys, tiny_checkpoint_hub_layout, flags, words):
    flags = [str(tiny_checkpoint_hub_layout) if f == "TINY" else f for f in flags]
    argv = ["bench", "--model", "shakespeare", "--peers", "none", *flags]
    assert words in _in_process_error(capsys, argv)


BAD_ABLATE = [
    (["--model", "random:gpt3"], "unknown preset"),
    (["--dtype", "int8"], "int8"),
    (["--rule-lists", "bogus"], "bogus"),
    (["--rule-lists", "none+gemv"], "'none' is a preset"),
    (["--prompt-len", "256"], "no room to decode"),          # shakespeare's context is 256
    (["--decode-tokens", "0"], "--decode-tokens"),
]


@pytest.mark.parametrize("flags, words", BAD_ABLATE, ids=[" ".join(f) for f, _ in BAD_ABLATE])
def test_bad_ablate_flags(capsys, flags, words):
    argv = ["ablate", "--model", "shakespeare", "--targets", "llvm", "--no-charts", *flags]
    assert words in _in_process_error(capsys, argv)


def test_bench_measures_ours_before_any_peer(capsys):
    """Every tinygpt2 row is measured before the first peer runs (torch's allocations stay in the process), and
    the table keeps each model's rows together; the peer of a bundled model is built from its config."""
    pytest.importorskip("transformers")
    from tinygpt2.cli import main

    argv = ["bench", "--models", "shakespeare,random:distilgpt2", "--peers", "hf-eager", "--prompt-lens", "16",
            "--decode-tokens", "2", "--repeats", "1", "--rules", "tuned"]
    assert main(argv) == 0
    out = capsys.readouterr()
    progress = [line.split(" | ")[0] + " " + line.split(" | ")[1] for line in out.err.splitlines() if line.startswith("| ")]
    assert progress == ["| tinygpt2 shakespeare", "| tinygpt2 random:distilgpt2", "| hf-eager shakespeare",
                        "| hf-eager random:distilgpt2"], out.err
    table = [line.split(" | ")[:2] for line in out.out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert table == [["| tinygpt2", "shakespeare"], ["| hf-eager", "shakespeare"],
                     ["| tinygpt2", "random:distilgpt2"], ["| hf-eager", "random:distilgpt2"]]


def test_bench_table_says_how_many_times_faster_ours_is_than_each_peer():
    """A peer's row carries ours' tok/s over its own, at the longest prompt and in decode ("-" where either side has
    none: transformers compiled times decode only); decode's share of the roofline comes last."""
    from tinygpt2.bench import Row, to_markdown

    rows = [Row("tinygpt2", "random:gpt2-xl", "cuda", "float16", {128: 18000.0, 1024: 90000.0}, 705.0),
            Row("hf-eager", "random:gpt2-xl", "cuda", "float16", {128: 6000.0, 1024: 45000.0}, 47.0),
            Row("hf-compiled", "random:gpt2-xl", "cuda", "float16", {}, 352.5)]
    head, _, *body = [line.split(" | ") for line in to_markdown(rows, {("random:gpt2-xl", "float16"): 940.0}).splitlines()]
    assert head[-3:] == ["tinygpt2 / this (prefill@1024, decode)", "roofline tok/s", "% roofline |"]
    assert [r[-3] for r in body] == ["-", "2.0x, 15.0x", "-, 2.0x"]
    assert [r[-1] for r in body] == ["75% |", "5% |", "38% |"]
    # a peer alone (the progress line printed as each row is measured) has no ratio column
    assert "tinygpt2 / this" not in to_markdown(rows[1:2])


def test_ablate_checks_every_targets_device_before_measuring_any(capsys, tmp_path, monkeypatch):
    from tinygpt2.tvm_shim import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA GPU: the error under test cannot happen")
    monkeypatch.setenv("TINYGPT2_CACHE", str(tmp_path))
    argv = ["ablate", "--model", "shakespeare", "--targets", "llvm,cuda", "--rule-lists", "none", "--no-charts"]
    assert "no CUDA GPU" in _in_process_error(capsys, argv)
    assert not any(tmp_path.iterdir())                        # llvm was not measured (nor compiled) first


def test_a_cache_folder_that_is_a_file_fails_before_compiling(capsys, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("TINYGPT2_CACHE", str(tmp_path / "cache"))
    assert "not a writable folder" in _in_process_error(capsys, ["generate", "--model", "shakespeare"])


def test_a_module_attribute_that_is_no_rule_list(capsys):
    assert "'os:path' is a module, not a rule list" in _in_process_error(
        capsys, ["generate", "--model", "shakespeare", "--rules", "os:path"])


def test_step_with_a_tolerance_that_passes_nothing(capsys):
    assert "--tolerance must be > 0" in _in_process_error(capsys, ["step", "--model", "shakespeare", "--tolerance", "-1"])
