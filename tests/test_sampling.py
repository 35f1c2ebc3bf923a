"""The host sampler (runtime/sampling.py) against the textbook one: every probability over the whole
vocabulary, a full sort for top-p, numpy's rng.choice for the draw. Same seed, same token."""

import numpy as np
import pytest

from tinygpt2.errors import GenerationError
from tinygpt2.runtime import sampling
from tinygpt2.runtime.sampling import check_args, keep, sample


def sample_ref(logits, temperature, top_k=None, top_p=None, rng=None):
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.sort(z)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        kept = order[: int(np.searchsorted(cum, top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[kept] = probs[kept]
        probs = mask / mask.sum()
    return int(rng.choice(probs.size, p=probs))


SETTINGS = [(0.8, None, None), (0.8, 50, None), (1.0, None, 0.9), (0.7, 40, 0.95), (1.3, 1000, 0.5),
            (0.5, 1, None), (2.0, None, 0.999)]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_same_token_as_the_reference(temperature, top_k, top_p):
    for seed in range(40):
        r = np.random.default_rng(1000 + seed)
        logits = (r.standard_normal(50257) * r.uniform(0.5, 6)).astype(np.float32)
        ours = sample(logits, temperature, top_k, top_p, rng=np.random.default_rng(seed))
        ref = sample_ref(logits, temperature, top_k, top_p, rng=np.random.default_rng(seed))
        assert ours == ref, (seed, temperature, top_k, top_p)


def test_greedy_is_argmax_whatever_top_k_and_top_p_say():
    logits = np.array([0.5, 3.0, 3.0, -1.0], np.float32)
    assert sample(logits, 0.0, top_k=4, top_p=0.1) == 1          # the lowest id on ties, as numpy


def test_top_k_keeps_ties_with_the_kth():
    logits = np.array([1.0, 5.0, 3.0, 3.0, 0.0], np.float32)
    ids, probs = keep(logits, 1.0, top_k=2)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(probs, np.exp([5.0, 3.0, 3.0]) / np.exp([5.0, 3.0, 3.0]).sum())


def test_top_p_is_the_smallest_prefix_reaching_the_mass():
    probs = np.array([0.1, 0.4, 0.3, 0.2])
    logits = np.log(probs).astype(np.float32)
    assert keep(logits, 1.0, top_p=0.39)[0].tolist() == [1]          # 0.4 >= 0.39: one token
    assert keep(logits, 1.0, top_p=0.41)[0].tolist() == [1, 2]       # 0.4 + 0.3
    assert keep(logits, 1.0, top_p=0.71)[0].tolist() == [1, 2, 3]
    assert keep(logits, 1.0, top_p=0.95)[0].tolist() == [0, 1, 2, 3]


def test_a_flat_nucleus_larger_than_the_first_candidates():
    # 5000 near-equal logits: top_p 0.9 keeps ~4500 tokens, more than NUCLEUS_FIRST, so the search grows
    r = np.random.default_rng(3)
    logits = (r.standard_normal(5000) * 0.01).astype(np.float32)
    ids, probs = keep(logits, 1.0, top_p=0.9)
    full = np.exp(logits.astype(np.float64) - logits.max())
    full /= full.sum()
    order = np.argsort(-full, kind="stable")
    n = int(np.searchsorted(np.cumsum(full[order]), 0.9)) + 1
    assert ids.size == n > sampling.NUCLEUS_FIRST
    assert ids.tolist() == sorted(order[:n].tolist())
    np.testing.assert_allclose(probs.sum(), 1.0)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1, top_k=None, top_p=None),
                                    dict(temperature=1, top_k=0, top_p=None),
                                    dict(temperature=1, top_k=None, top_p=0.0),
                                    dict(temperature=1, top_k=None, top_p=1.5)])
def test_bad_arguments_are_typed_errors(kwargs):
    with pytest.raises(GenerationError):
        check_args(**kwargs)
