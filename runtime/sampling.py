"""Picking the next token from logits: greedy, temperature, top-k, top-p (nucleus), seeded."""

from __future__ import annotations

import numpy as np

from tinygpt2.errors import GenerationError


def check_args(temperature: float, top_k: int | None, top_p: float | None):
    if temperature < 0:
        raise GenerationError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be in (0, 1], got {top_p}")


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           rng: np.random.Generator | None = None) -> int:
    """logits [vocab] float32 -> a token id. temperature 0 is greedy (argmax) whatever top_k/top_p say."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]      # smallest prefix with mass >= top_p
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs))
