"""Config and weight loading, checked against transformers' own GPT2LMHeadModel parameters."""

import dataclasses
import shutil
import socket
import time

import numpy as np
import pytest

from tinygpt2.config import PRESETS, GPT2Config
from tinygpt2.errors import CheckpointError, ConfigError, DTypeError, OfflineError
from tinygpt2.weights import fold_layernorms, load_checkpoint, param_names, param_shapes

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def expected_params(model) -> dict[str, np.ndarray]:
    """Our layout, from transformers' state_dict: drop 'transformer.', transpose the Conv1D weights."""
    out = {}
    for k, v in model.state_dict().items():
        if not k.startswith("transformer.") or k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        name, a = k[len("transformer."):], v.detach().float().numpy()
        out[name] = a.T if name.endswith(TRANSPOSED) else a
    return out


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------- config

def test_presets():
    want = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
            "gpt2-xl": (48, 1600, 25), "distilgpt2": (6, 768, 12)}
    assert set(PRESETS) == set(want)
    for name, (L, C, H) in want.items():
        c = PRESETS[name]
        assert (c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.n_positions) == (L, C, H, 50257, 1024)
        assert c.n_inner == 4 * C and c.head_dim == C // H and c.n_ctx == 1024 and c.layer_norm_epsilon == 1e-5
    n = sum(int(np.prod(s)) for s in param_shapes(PRESETS["gpt2"]).values())
    assert n == 124_439_808                                   # GPT-2 small, lm_head tied


def test_from_json_tiny(tiny_checkpoint):
    c = GPT2Config.from_json(tiny_checkpoint / "config.json")
    assert c == GPT2Config(vocab_size=50257, n_positions=128, n_embd=48, n_layer=2, n_head=4,
                           layer_norm_epsilon=1e-5, n_inner=192)
    assert c.head_dim == 12 and c.n_ctx == 128
    assert GPT2Config.from_dict(c.to_dict()) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3                                          # frozen


def test_config_errors(tmp_path):
    base = PRESETS["gpt2"].to_dict()
    with pytest.raises(ConfigError, match="divisible"):
        GPT2Config.from_dict({**base, "n_embd": 100, "n_head": 3})
    with pytest.raises(ConfigError, match="activation"):
        GPT2Config.from_dict({**base, "activation_function": "relu"})
    with pytest.raises(ConfigError, match="model_type"):
        GPT2Config.from_dict({**base, "model_type": "llama"})
    with pytest.raises(ConfigError, match="n_layer"):
        GPT2Config.from_dict({k: v for k, v in base.items() if k != "n_layer"})
    assert GPT2Config.from_dict({**base, "unknown_field": 1, "n_inner": 1000}).n_inner == 1000
    with pytest.raises(ConfigError, match="nothere.json"):
        GPT2Config.from_json(tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        GPT2Config.from_json(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------ names and shapes

def test_param_names_and_shapes():
    c = GPT2Config(vocab_size=100, n_positions=16, n_embd=8, n_layer=2, n_head=2)
    names = param_names(c)
    layer = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    assert names == ["wte.weight", "wpe.weight", *[f"h.{i}.{p}" for i in range(2) for p in layer],
                     "ln_f.weight", "ln_f.bias"]
    s = param_shapes(c)
    assert list(s) == names
    assert s["wte.weight"] == (100, 8) and s["wpe.weight"] == (16, 8)
    assert s["h.1.attn.c_attn.weight"] == (24, 8) and s["h.1.attn.c_attn.bias"] == (24,)
    assert s["h.0.attn.c_proj.weight"] == (8, 8)
    assert s["h.0.mlp.c_fc.weight"] == (32, 8) and s["h.0.mlp.c_fc.bias"] == (32,)
    assert s["h.0.mlp.c_proj.weight"] == (8, 32) and s["ln_f.bias"] == (8,)


def test_folded_names_shapes_and_values():
    """fused-decode's parameters: ln_1 / ln_2 gone into c_attn / c_fc (W * gamma, b + W @ beta, and the
    folded weight's row sums in float32), everything else as loaded."""
    c = GPT2Config(vocab_size=100, n_positions=16, n_embd=8, n_layer=2, n_head=2)
    layer = ["ln_1.c_attn.weight", "ln_1.c_attn.bias", "ln_1.c_attn.weight_sum", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.c_fc.weight", "ln_2.c_fc.bias", "ln_2.c_fc.weight_sum",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    names = param_names(c, folded=True)
    assert names == ["wte.weight", "wpe.weight", *[f"h.{i}.{p}" for i in range(2) for p in layer],
                     "ln_f.weight", "ln_f.bias"]
    s = param_shapes(c, folded=True)
    assert list(s) == names and s["h.1.ln_1.c_attn.weight_sum"] == (24,) and s["h.0.ln_2.c_fc.weight"] == (32, 8)
    rng = np.random.default_rng(0)
    p = {n: rng.standard_normal(sh).astype(np.float16) for n, sh in param_shapes(c).items()}
    f = fold_layernorms(c, p)
    assert list(f) == names and all(f[n].shape == s[n] for n in names)
    assert [n for n in names if f[n].dtype != np.float16] == [n for n in names if n.endswith("weight_sum")]
    assert all(f[n].dtype == np.float32 for n in names if n.endswith("weight_sum"))
    w, g = p["h.1.mlp.c_fc.weight"].astype(np.float64), p["h.1.ln_2.weight"].astype(np.float64)
    np.testing.assert_array_equal(f["h.1.ln_2.c_fc.weight"], (w * g).astype(np.float16))
    b = p["h.1.mlp.c_fc.bias"] + w @ p["h.1.ln_2.bias"].astype(np.float64)
    np.testing.assert_array_equal(f["h.1.ln_2.c_fc.bias"], b.astype(np.float16))
    np.testing.assert_allclose(f["h.1.ln_2.c_fc.weight_sum"], f["h.1.ln_2.c_fc.weight"].astype(np.float64).sum(1),
                               rtol=1e-6)
    for n in ("wte.weight", "h.0.attn.c_proj.weight", "h.1.mlp.c_proj.bias", "ln_f.weight"):
        assert f[n] is p[n]


# ----------------------------------------------------------------------------------- local checkpoints

@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_checkpoint_hub_layout"])
def test_load_matches_transformers(fixture, request, hf_reference):
    path = request.getfixturevalue(fixture)
    ck = load_checkpoint(str(path), progress=False)
    ref = expected_params(hf_reference(path))
    assert ck.config == GPT2Config.from_json(path / "config.json")
    assert list(ck.params) == param_names(ck.config)
    assert set(ref) == set(ck.params)
    shapes = param_shapes(ck.config)
    for name, a in ck.params.items():
        assert a.dtype == np.float32 and a.flags.c_contiguous, name
        assert a.shape == shapes[name], name
        np.testing.assert_array_equal(a, ref[name], err_msg=name)
    assert ck.tokenizer_dir == path and ck.source == str(path)


def test_layernorm_and_biases_are_nontrivial(tiny_checkpoint):
    p = load_checkpoint(str(tiny_checkpoint), progress=False).params
    assert not np.allclose(p["h.0.ln_1.weight"], 1) and not np.allclose(p["ln_f.bias"], 0)
    assert not np.allclose(p["h.1.mlp.c_fc.bias"], 0)


def test_sharded_checkpoint(tiny_checkpoint, hf_reference, tmp_path):
    model = hf_reference(tiny_checkpoint)
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ck = load_checkpoint(str(tmp_path), progress=False)
    ref = expected_params(model)
    for name, a in ck.params.items():
        np.testing.assert_array_equal(a, ref[name], err_msg=name)
    assert ck.tokenizer_dir is None                            # no vocab files in this directory


def test_bf16_and_fp16_checkpoints(tiny_checkpoint, hf_reference, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    model = hf_reference(tiny_checkpoint)
    for tdt in (torch.bfloat16, torch.float16):
        d = tmp_path / str(tdt).split(".")[-1]
        d.mkdir()
        shutil.copy(tiny_checkpoint / "config.json", d)
        sd = {k: v.to(tdt).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(sd, str(d / "model.safetensors"))
        ck = load_checkpoint(str(d), progress=False)
        for k, v in sd.items():
            name = k.removeprefix("transformer.")
            want = v.float().numpy()
            np.testing.assert_array_equal(ck.params[name], want.T if name.endswith(TRANSPOSED) else want)


def test_float16(tiny_checkpoint):
    p32 = load_checkpoint(str(tiny_checkpoint), progress=False).params
    p16 = load_checkpoint(str(tiny_checkpoint), dtype="float16", progress=False).params
    for name in p32:
        assert p16[name].dtype == np.float16 and p16[name].flags.c_contiguous
        np.testing.assert_array_equal(p16[name], p32[name].astype(np.float16))


def test_bad_dtype(tiny_checkpoint):
    with pytest.raises(DTypeError, match="unsupported dtype 'bfloat16': choose float32 or float16"):
        load_checkpoint(str(tiny_checkpoint), dtype="bfloat16")


def test_missing_directory(tmp_path):
    for spec in (str(tmp_path / "nope"), "./no/such/dir", "~/no-such-checkpoint-dir"):
        with pytest.raises(CheckpointError, match="no such checkpoint directory"):
            load_checkpoint(spec)
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(str(tmp_path))                         # exists, but empty


def test_corrupt_safetensors(tiny_checkpoint, tmp_path):
    d = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    f = d / "model.safetensors"
    data = f.read_bytes()
    for n in (len(data) - 1000, 100, 3):
        f.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="model.safetensors"):
            load_checkpoint(str(d))


def test_missing_tensor(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    t = load_file(str(d / "model.safetensors"))
    del t["transformer.h.1.mlp.c_fc.bias"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.bias"):
        load_checkpoint(str(d))


def test_wrong_shape(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_checkpoint(tiny_checkpoint, tmp_path / "ck")
    t = load_file(str(d / "model.safetensors"))
    t["transformer.h.0.attn.c_attn.weight"] = t["transformer.h.0.attn.c_attn.weight"].T.copy()
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_attn\.weight.*\[144, 48\].*\[48, 144\]"):
        load_checkpoint(str(d))


# ------------------------------------------------------------------------------------------- random

def test_random_gpt2():
    t = time.perf_counter()
    ck = load_checkpoint("random:gpt2")
    elapsed = time.perf_counter() - t
    c = PRESETS["gpt2"]
    assert ck.config == c and ck.tokenizer_dir is None and ck.source == "random:gpt2"
    assert list(ck.params) == param_names(c)
    for name, shape in param_shapes(c).items():
        assert ck.params[name].shape == shape and ck.params[name].dtype == np.float32, name
    p = ck.params
    assert np.all(p["h.3.ln_1.weight"] == 1) and np.all(p["ln_f.bias"] == 0) and np.all(p["h.0.attn.c_attn.bias"] == 0)
    w = p["h.5.mlp.c_fc.weight"]
    assert abs(w.std() - 0.02) < 1e-3 and abs(w.mean()) < 1e-3
    assert not np.array_equal(p["h.0.attn.c_attn.weight"], p["h.1.attn.c_attn.weight"])
    np.testing.assert_array_equal(load_checkpoint("random:gpt2").params["wte.weight"], p["wte.weight"])  # seeded
    assert elapsed < 20
    p16 = load_checkpoint("random:distilgpt2", dtype="float16").params
    assert p16["wte.weight"].dtype == np.float16 and p16["wte.weight"].shape == (50257, 768)
    with pytest.raises(CheckpointError, match="preset"):
        load_checkpoint("random:gpt5")


# ---------------------------------------------------------------------------------------------- Hub

def test_hub_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(OfflineError, match="not in the local cache"):
        load_checkpoint("tinygpt2-tests/no-such-model-xyz", progress=False)
    assert time.perf_counter() - t < 10


def test_hub_unreachable_does_not_hang(monkeypatch):
    """A Hub that accepts connections but never answers (huggingface_hub itself would wait forever)."""
    import huggingface_hub.constants as hfc

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)                                          # the kernel completes connects; nobody answers
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hfc, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        t = time.perf_counter()
        with pytest.raises(OfflineError, match="cannot reach the Hugging Face Hub to download"):
            load_checkpoint("tinygpt2-tests/not-cached-xyz", progress=False)
        assert time.perf_counter() - t < 10
    finally:
        server.close()


def test_bad_hub_id():
    with pytest.raises(CheckpointError, match="Hub model id"):
        load_checkpoint("not a model id")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint("a/b/c")


def test_hub_id_from_local_cache(tiny_checkpoint, hf_reference, tmp_path, monkeypatch):
    """A Hub id already in the cache loads with the Hub unreachable (and with HF_HUB_OFFLINE)."""
    import huggingface_hub.constants as hfc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tinygpt2-tests--cached"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    for offline in ("1", ""):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        ck = load_checkpoint("tinygpt2-tests/cached", progress=False)
        assert ck.source == "tinygpt2-tests/cached" and ck.tokenizer_dir == repo / "snapshots" / commit
        np.testing.assert_array_equal(ck.params["h.1.mlp.c_proj.weight"],
                                      expected_params(hf_reference(tiny_checkpoint))["h.1.mlp.c_proj.weight"])
