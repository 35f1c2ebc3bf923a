"""The small Shakespeare GPT-2 shipped in tinygpt2/assets/shakespeare/ (issue 4).

Checked with transformers (an independent implementation): the files are there and small enough,
the config is a valid small GPT-2, and its greedy continuation of "ROMEO:\\n" is mostly words that
occur in the training corpus (words.txt, built by scripts/build_corpus.py).
"""

import json
import re
from pathlib import Path

import pytest

ASSET = Path(__file__).resolve().parents[1] / "tinygpt2" / "assets" / "shakespeare"
FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "metrics.json",
         "README.md", "words.txt"]
MAX_BYTES = 24_000_000
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")  # as in scripts/build_corpus.py


@pytest.mark.parametrize("name", FILES)
def test_file_exists(name):
    path = ASSET / name
    assert path.is_file() and path.stat().st_size > 0, path


def test_safetensors_small_fp16_tied():
    path = ASSET / "model.safetensors"
    assert path.stat().st_size <= MAX_BYTES
    with open(path, "rb") as f:                       # safetensors: u64 header length, JSON header
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    assert {t["dtype"] for t in header.values()} == {"F16"}
    assert not any(k.startswith("lm_head") for k in header)   # tied to wte, stored once
    assert header["transformer.wte.weight"]["shape"] == [50257, 192]


def test_config():
    cfg = json.loads((ASSET / "config.json").read_text())
    assert cfg["model_type"] == "gpt2"
    assert cfg["vocab_size"] == 50257
    assert cfg["n_layer"] == 4 and cfg["n_embd"] == 192 and cfg["n_positions"] == 256
    assert cfg["n_head"] in (4, 6) and cfg["n_embd"] % cfg["n_head"] == 0
    assert cfg.get("n_inner") in (None, 4 * cfg["n_embd"])
    assert cfg["activation_function"] == "gelu_new"
    assert cfg.get("tie_word_embeddings", True) is True
    assert cfg["eos_token_id"] == 50256


def test_vocab_is_gpt2():
    ref = ASSET.parent / "gpt2-vocab"
    for name in ("vocab.json", "merges.txt"):
        assert (ASSET / name).read_bytes() == (ref / name).read_bytes(), name


def test_metrics_beat_unigram():
    m = json.loads((ASSET / "metrics.json").read_text())
    assert m["val_loss"] < m["unigram_val_loss"] - 1.0
    assert m["safetensors_bytes"] == (ASSET / "model.safetensors").stat().st_size


def test_greedy_continuation_is_mostly_corpus_words():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.GPT2LMHeadModel.from_pretrained(ASSET).float().eval()
    assert next(model.parameters()).dtype == torch.float32
    tok = tokenizers.ByteLevelBPETokenizer(str(ASSET / "vocab.json"), str(ASSET / "merges.txt"))
    prompt = tok.encode("ROMEO:\n").ids
    assert prompt == [33676, 4720, 25, 198]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                             pad_token_id=50256)
    new = out[0, len(prompt):].tolist()
    assert len(new) == 40
    text = tok.decode(new)
    words = WORD_RE.findall(text.lower())
    known = set((ASSET / "words.txt").read_text(encoding="utf-8").split())
    assert len(known) > 10_000
    assert len(words) >= 10, text
    hits = sum(w in known for w in words)
    assert hits / len(words) >= 0.7, (hits, len(words), text)
