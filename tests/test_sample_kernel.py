"""Sampling on the device (kernels/sample.py), run on WebGPU: each call draws one token and advances
the position, so `repeat` calls back to back in one submit are a run of sampled decode steps over the
same logits -- draws at positions 0, 1, 2, ..., each from its own random stream.

Checked against two references: the distribution it should draw from (sample_probs_ref, float64,
the host sampler's rules) by a chi-square test over 1500 draws, and, token for token, the same
algorithm and random numbers written in numpy (sample_advance_ref)."""

import numpy as np
import pytest

from tinygpt2 import kernels as K
from tinygpt2.kernels.sample import make_sample_advance_gpu, sample_advance_ref, sample_probs_ref

pytest.importorskip("wgpu")
from tinygpt2.runtime.webgpu import run_kernel  # noqa: E402

P, TH = 4100, 256          # n_ctx: room for 4000 steps; WebGPU's 256 threads


def draw(logits, temperature, top_k, top_p, seed, steps, rounds=K.sample.ROUNDS, skip=False):
    """`steps` sampled decode steps from position 0: (tokens [steps], ids, pos)."""
    V = logits.shape[1]
    func = make_sample_advance_gpu(V, P, TH, rounds, skip)
    knobs = np.array([temperature, V if top_k is None else top_k, 1.0 if top_p is None else top_p, seed], np.float32)
    _, _, ids, pos, history, nxt = run_kernel(func, [logits, knobs, np.zeros(1, np.int32), np.zeros(1, np.int32),
                                                      np.zeros(P + 1, np.int32), np.zeros(1, np.int32)], repeat=steps)
    assert history[steps + 1:].max() == 0                 # nothing written past the last step
    return history[1:steps + 1], ids, pos, nxt


@pytest.fixture(scope="module")
def logits():
    return (np.random.default_rng(0).standard_normal((1, 1000)) * 2).astype(np.float32)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.8, 50, None), (1.0, None, 0.9),
                                                     (0.7, 100, 0.8)])
def test_draws_follow_the_distribution(logits, temperature, top_k, top_p):
    n = 1500
    tokens, ids, pos, nxt = draw(logits, temperature, top_k, top_p, seed=12345, steps=n)
    assert pos[0] == n and ids[0] == nxt[0] == tokens[-1]          # advanced as decode_greedy's argmax does
    probs = sample_probs_ref(logits, temperature, top_k, top_p)
    counts = np.bincount(tokens, minlength=probs.size)
    assert counts[probs == 0].sum() == 0                          # nothing outside top-k / top-p, ever
    # chi-square, tokens expected fewer than 5 times lumped into one bin
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2, dof = ((obs - exp) ** 2 / exp).sum(), exp.size - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)         # 5 standard deviations


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, 0.8), (1.3, 20, None), (0.9, 300, 0.5)])
def test_same_tokens_as_numpy(temperature, top_k, top_p):
    """Token for token against the algorithm in numpy: the rejection rounds included (the first case
    draws the top token first in several steps, whose test round then has no candidates)."""
    logits = (np.random.default_rng(1).standard_normal((1, 300)) * 2).astype(np.float32)
    tokens, *_ = draw(logits, temperature, top_k, top_p, seed=777, steps=40)
    knobs = [temperature, 300 if top_k is None else top_k, 1.0 if top_p is None else top_p, 777]
    assert tokens.tolist() == [sample_advance_ref(logits, knobs, p) for p in range(40)]


@pytest.mark.parametrize("top_k,top_p", [(None, 0.7), (20, 0.7), (None, None), (20, None)])
def test_cudas_variant_skipping_unused_work_draws_the_same_tokens(top_k, top_p):
    """skip=True (the model's choice on CUDA) branches around barriers: around the bisection when there
    is no top-k, around the rounds after the first when there is no top-p. Run here too (naga accepts
    such branches), it must change nothing."""
    logits = (np.random.default_rng(2).standard_normal((1, 300)) * 2).astype(np.float32)
    runs = [draw(logits, 0.9, top_k, top_p, seed=11, steps=30, skip=skip)[0].tolist() for skip in (False, True)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("skip", [False, True])
def test_top_k_with_ties_at_its_edge(skip):
    """Logits on a grid of 0.25: hundreds of ties, so top-k's count jumps past k at its edge (the whole tie
    kept) where the search cannot stop at a count of exactly k, and stops early where it can (k = 7 below
    falls between two levels of the grid at this seed; 40 inside one). Token for token against numpy."""
    logits = np.round(np.random.default_rng(3).standard_normal((1, 300)) * 4) / 4
    logits = logits.astype(np.float32)
    for top_k in (7, 40):
        tokens, *_ = draw(logits, 1.0, top_k, None, seed=9, steps=20, skip=skip)
        assert tokens.tolist() == [sample_advance_ref(logits, [1.0, top_k, 1.0, 9], p) for p in range(20)]


def test_top_k_1_and_a_tiny_top_p_are_greedy(logits):
    assert set(draw(logits, 1.0, 1, None, seed=1, steps=20)[0]) == {int(np.argmax(logits))}
    assert set(draw(logits, 1.0, None, 1e-6, seed=1, steps=20)[0]) == {int(np.argmax(logits))}


def test_the_seed_picks_the_stream(logits):
    a = draw(logits, 1.0, None, None, seed=5, steps=30)[0]
    assert a.tolist() == draw(logits, 1.0, None, None, seed=5, steps=30)[0].tolist()
    assert a.tolist() != draw(logits, 1.0, None, None, seed=6, steps=30)[0].tolist()


def test_vocabulary_not_a_multiple_of_the_threads():
    """50257 = 196 x 256 + 81: the last pass's threads past the vocabulary must never be drawn."""
    logits = np.full((1, 50257), -30.0, np.float32)
    logits[0, -3:] = 5.0                                  # the last three ids hold all the mass
    tokens = draw(logits, 1.0, None, None, seed=3, steps=60)[0]
    assert set(tokens) <= {50254, 50255, 50256} and len(set(tokens)) == 3
