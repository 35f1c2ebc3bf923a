"""The bundled Shakespeare model through tinygpt2's own runtime: it loads by name through the same
HF-format loading code as any checkpoint, matches transformers, and writes mostly English."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import tinygpt2

ASSET = Path(tinygpt2.__file__).parent / "assets" / "shakespeare"


@pytest.fixture(scope="module")
def model():
    return tinygpt2.load("shakespeare", target="llvm")


def test_logits_match_transformers_on_the_same_file(model, hf_reference):
    hf = hf_reference(ASSET)                              # fp16 file, upcast to fp32 by both
    ids = model.tokenizer.encode("ROMEO:\nWhat light through yonder window breaks?")
    with torch.no_grad():
        want = hf(torch.tensor([ids + [198, 32]])).logits[0].float().numpy()
    rel = lambda a, b: np.max(np.abs(a - b)) / np.max(np.abs(b))    # noqa: E731
    assert rel(model.prefill(ids), want[len(ids) - 1]) < 1e-4
    assert rel(model.decode(198), want[len(ids)]) < 1e-4
    assert rel(model.decode(32), want[len(ids) + 1]) < 1e-4


def test_greedy_text_is_mostly_english_words(model):
    words = set((ASSET / "words.txt").read_text().split())
    out = model.generate("ROMEO:\n", max_new_tokens=60, temperature=0)
    found = re.findall(r"[a-z']+", out.text.lower())
    assert len(found) >= 20
    known = sum(w.strip("'") in words for w in found)
    assert known / len(found) >= 0.9, out.text


def test_sampled_text_is_mostly_english_words(model):
    words = set((ASSET / "words.txt").read_text().split())
    out = model.generate("JULIET:\n", max_new_tokens=60, temperature=0.8, top_k=50, seed=0)
    found = re.findall(r"[a-z']+", out.text.lower())
    assert len(found) >= 20
    assert sum(w.strip("'") in words for w in found) / len(found) >= 0.8, out.text
