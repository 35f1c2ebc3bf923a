"""Shared fixtures: small GPT-2 checkpoints in the Hugging Face layout, built once per session by
transformers (an independent implementation) from a seeded torch model.

    tiny_checkpoint            Path: save_pretrained dir (transformer.* keys), 2 layers, C=64, 4 heads, P=128,
                               + vocab.json/merges.txt
    tiny_checkpoint_hub_layout Path: Hub-style keys (h.0..., plus lm_head.weight and attn.bias buffers),
                               3 layers, C=48, 3 heads, P=64, + vocab.json/merges.txt
    hf_reference               function path -> transformers GPT2LMHeadModel, float32, eval mode
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VOCAB_DIR = ROOT / "tinygpt2" / "assets" / "gpt2-vocab"

# `python -m pytest` puts the checkout's root on sys.path, where kernels/ would be importable as a top-level
# `kernels`: transformers >= 5.25 imports the Hub's own `kernels` package (a dependency of it) when it is
# installed, and would get ours instead (ImportError: cannot import name 'CUDAProperties' from 'kernels').
# The tests import tinygpt2 as installed (tinygpt2.kernels), never from the root, so the root goes.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != ROOT]


def _make_model(seed: int, **shape):
    """A GPT2LMHeadModel with every parameter randomized: a mixed-up tensor cannot go unnoticed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=50257, activation_function="gelu_new", resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, **shape)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():           # tied lm_head is wte: listed once
            if ".ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))   # layernorm gains around 1
            elif name.endswith(".bias") or ".ln_" in name:
                p.copy_(0.05 * torch.randn_like(p))        # biases and layernorm shifts
            else:
                p.copy_(0.08 * torch.randn_like(p))        # matrices and embeddings
    return model


def _copy_vocab(d: Path):
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(VOCAB_DIR / f, d / f)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """save_pretrained layout (keys 'transformer.h.0...'): 2 layers, n_embd 48, 4 heads, 128 positions."""
    d = tmp_path_factory.mktemp("tiny_checkpoint")
    model = _make_model(0, n_layer=2, n_embd=48, n_head=4, n_positions=128)
    model.save_pretrained(d)                                  # transformers 5 always writes safetensors
    assert (d / "model.safetensors").is_file()
    _copy_vocab(d)
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint_hub_layout(tmp_path_factory) -> Path:
    """The Hub's own layout (keys 'h.0...', no 'transformer.'), with the extras the Hub files carry
    (lm_head.weight, attn.bias causal-mask buffers): 3 layers, n_embd 48, 3 heads, 64 positions."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_checkpoint_hub_layout")
    model = _make_model(1, n_layer=3, n_embd=48, n_head=3, n_positions=64)
    model.config.save_pretrained(d)
    sd = model.state_dict()
    tensors = {k.removeprefix("transformer."): v.contiguous().clone() for k, v in sd.items()}
    tensors["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    P = model.config.n_positions
    for i in range(model.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P, dtype=torch.bool)).view(1, 1, P, P)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    _copy_vocab(d)
    return d


@pytest.fixture(scope="session")
def hf_reference():
    """path -> transformers' GPT2LMHeadModel loaded from that checkpoint dir, float32, eval mode.
    Cached per path and shared between tests: do not modify the model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cache = {}

    def load(path):
        path = str(path)
        if path not in cache:
            cache[path] = transformers.GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
        return cache[path]

    return load


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """Every test session compiles into its own fresh cache directory (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("tinygpt2-cache")
    old = os.environ.get("TINYGPT2_CACHE")
    os.environ["TINYGPT2_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TINYGPT2_CACHE", None)
    else:
        os.environ["TINYGPT2_CACHE"] = old
