"""Picking the next token from logits: greedy, temperature, top-k, top-p (nucleus), seeded.

    greedy       argmax_v logits[v] (the lowest id on ties)
    temperature  p(v) = softmax(logits / T)[v]
    top-k        keep the k largest logits (and any tied with the k-th), -inf for the rest, then softmax
    top-p        after top-k: keep the smallest set of most probable tokens whose mass is >= top_p
                 (probabilities in descending order, ties by id), renormalise
    draw         u = rng.random();  the first v whose cumulative probability (ids in order) exceeds u

The draw is numpy's `rng.choice(vocab, p=probs)` written out (one `rng.random()`, the same token for
the same seed). Only tokens that can be kept are ever exponentiated or sorted: top-k's candidates come
from one `np.partition`, top-p's nucleus is looked for among the m most probable tokens, m growing
only when their mass falls short of top_p (a sort of all 50257 took ~3.5 ms of the 6.3 a token on
the 2-core CI machine; a decode step of gpt2 on an H200 takes ~0.2 ms).
"""

from __future__ import annotations

import math

import numpy as np

from tinygpt2.errors import GenerationError

NUCLEUS_FIRST = 256       # tokens sorted first when looking for top-p's nucleus; x16 while too few


def check_args(temperature: float, top_k: int | None, top_p: float | None, seed: int | None = None,
               stop: str | list[str] | None = None):
    """GenerationError for sampling arguments no sampler takes (NaN and infinities included)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be in (0, 1], got {top_p}")
    if seed is not None and not 0 <= seed < 2 ** 63:
        raise GenerationError(f"seed must be a whole number in [0, 2^63), got {seed}")
    if any(s == "" for s in ([stop] if isinstance(stop, str) else stop or [])):
        raise GenerationError("a stop string must not be empty")


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           rng: np.random.Generator | None = None) -> int:
    """logits [vocab] float32 -> a token id. temperature 0 is greedy (argmax) whatever top_k/top_p say."""
    if temperature == 0:
        return int(np.argmax(logits))
    ids, probs = keep(logits, temperature, top_k, top_p)         # ids ascending, probs summing to ~1
    rng = rng if rng is not None else np.random.default_rng()
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return int(ids[np.searchsorted(cdf, rng.random(), side="right")])


def keep(logits: np.ndarray, temperature: float, top_k: int | None = None,
         top_p: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tokens that temperature, top-k and top-p leave, and their renormalised probabilities:
    (ids [n] int64 ascending, probs [n] float64)."""
    z = np.asarray(logits).reshape(-1)
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        ids = np.flatnonzero(z >= kth)                 # the k largest, ties with the k-th included
        x = z[ids].astype(np.float64) / temperature
    else:
        ids = np.arange(z.size)
        x = z.astype(np.float64) / temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        nucleus = _nucleus(probs, top_p)
        ids, probs = ids[nucleus], probs[nucleus]
        probs = probs / probs.sum()
    return ids, probs


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (ascending) of the smallest prefix of probs in descending order, ties by position,
    whose sum is >= top_p; the whole order is only sorted when the m most probable fall short."""
    m = NUCLEUS_FIRST
    while True:
        if m < probs.size:
            cut = np.partition(probs, -m)[-m]
            cand = np.flatnonzero(probs >= cut)          # the m most probable, ties with the m-th included
        else:
            cand = np.arange(probs.size)
        order = cand[np.argsort(-probs[cand], kind="stable")]     # descending; ties keep position order
        cum = np.cumsum(probs[order])
        n = int(np.searchsorted(cum, top_p))               # the first prefix with mass >= top_p ...
        if n < cum.size or cand.size == probs.size:        # ... found among the candidates (or all sorted)
            return np.sort(order[: n + 1])
        m *= 16
