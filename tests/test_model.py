"""End to end on the CPU: tinygpt2's logits against Hugging Face transformers' GPT2LMHeadModel, on
small checkpoints in the Hub's format (random weights, real vocabulary) built by conftest.py.

"Relative" below means relative to the largest reference logit: max|ours - theirs| / max|theirs|.
"""

import numpy as np
import pytest
import torch

import tinygpt2
from tinygpt2 import rules as R

PROMPT = "The quick brown fox jumps over the lazy dog. It"


def rel_err(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def hf_logits(hf, ids):
    """Logits [len(ids), vocab] of the reference model for a whole sequence."""
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tinygpt2.load(str(tiny_checkpoint), target="llvm", dtype="float32")


@pytest.fixture(scope="module")
def hf(tiny_checkpoint, hf_reference):
    return hf_reference(tiny_checkpoint)


def test_prefill_and_every_decode_step_match_transformers(tiny, hf):
    ids = tiny.tokenizer.encode(PROMPT)
    want = hf_logits(hf, ids + list(range(100, 120)))        # the whole sequence at once: every position
    assert rel_err(tiny.prefill(ids), want[len(ids) - 1]) < 1e-4
    for step, token in enumerate(range(100, 120)):
        got = tiny.decode(token)
        assert rel_err(got, want[len(ids) + step]) < 1e-4, f"decode step {step}"


def test_32_greedy_tokens_equal_transformers_generate(tiny, hf):
    ids = tiny.tokenizer.encode(PROMPT)
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=50256)
    out = tiny.generate(ids, max_new_tokens=32, temperature=0)
    want_ids = want[0, len(ids):].tolist()
    # an EOS would end our generation early; with min_new_tokens HF never emits one, so compare the prefix
    assert out.ids == want_ids[: len(out.ids)] and (len(out.ids) == 32 or out.stop_reason == "eos")
    assert out.text == tiny.tokenizer.decode(out.ids)


class _HostGreedy:
    """The executor without `greedy`: generation takes the argmax of each step's logits on the host."""

    def __init__(self, ex):
        self.config, self.cache, self.prefill, self.decode = ex.config, ex.cache, ex.prefill, ex.decode


@pytest.mark.parametrize("stop_after", [None, 3, 20])
def test_greedy_on_the_device_equals_greedy_on_the_host(tiny, stop_after):
    """decode_greedy (argmax on the device, 16, then 17, then 6 steps queued per round trip) gives the host loop's ids,
    and leaves the cache as the host loop does, also when a stop string ends it mid-chunk."""
    from tinygpt2.runtime.generate import generate
    ids = tiny.tokenizer.encode(PROMPT)
    stop = None
    if stop_after is not None:             # a stop string that ends generation after token `stop_after`
        first = generate(_HostGreedy(tiny.executor), tiny.tokenizer, ids, max_new_tokens=40)
        stop = tiny.tokenizer.decode(first.ids[:stop_after + 1])[-3:]
    host = generate(_HostGreedy(tiny.executor), tiny.tokenizer, ids, max_new_tokens=40, stop=stop)
    host_len = tiny.executor.cache.length
    after_host = tiny.decode(100)                                  # the sequence goes on from there
    dev = tiny.generate(ids, max_new_tokens=40, temperature=0, stop=stop)
    assert dev.ids == host.ids and dev.stop_reason == host.stop_reason and dev.text == host.text
    assert tiny.executor.cache.length == host_len
    np.testing.assert_allclose(tiny.decode(100), after_host, rtol=1e-5, atol=1e-5)


def test_greedy_on_the_device_to_the_end_of_the_context(tiny):
    """A run that reaches n_ctx: the last chunk is cut to the context, and the ids equal the host's."""
    from tinygpt2.runtime.generate import generate
    n_ctx = tiny.config.n_positions
    ids = list(range(200, 200 + n_ctx - 21))                       # 21 positions left: chunks of 16 + 5
    host = generate(_HostGreedy(tiny.executor), tiny.tokenizer, ids, max_new_tokens=100)
    dev = tiny.generate(ids, max_new_tokens=100, temperature=0)
    assert dev.ids == host.ids and dev.stop_reason == host.stop_reason
    assert host.stop_reason in ("context", "eos")
    assert tiny.executor.cache.length <= n_ctx


def test_second_sequence_is_not_affected_by_the_first(tiny, hf):
    a, b = tiny.tokenizer.encode("First, a long sequence that fills the cache a bit"), tiny.tokenizer.encode("Then")
    tiny.prefill(a)
    for t in range(10):
        tiny.decode(300 + t)
    got = tiny.prefill(b)
    assert rel_err(got, hf_logits(hf, b)[-1]) < 1e-4
    assert rel_err(tiny.decode(42), hf_logits(hf, b + [42])[-1]) < 1e-4


def test_hub_key_layout_and_other_shapes(tiny_checkpoint_hub_layout, hf_reference):
    """The Hub's `h.0...` key names, 3 heads of 16, a 64-token context filled to the end."""
    m = tinygpt2.load(str(tiny_checkpoint_hub_layout), target="llvm")
    hf = hf_reference(tiny_checkpoint_hub_layout)
    ids = list(range(1000, 1040))
    want = hf_logits(hf, ids + list(range(7, 7 + 24)))
    assert rel_err(m.prefill(ids), want[len(ids) - 1]) < 1e-4
    for step in range(24):                                    # up to n_positions = 64
        assert rel_err(m.decode(7 + step), want[len(ids) + step]) < 1e-4
    with pytest.raises(tinygpt2.errors.ContextOverflowError):
        m.decode(1)


def test_float16_within_2e_2(tiny_checkpoint, hf):
    m = tinygpt2.load(str(tiny_checkpoint), target="llvm", dtype="float16")
    ids = m.tokenizer.encode(PROMPT)
    want = hf_logits(hf, ids + [11, 12, 13])
    assert rel_err(m.prefill(ids), want[len(ids) - 1]) < 2e-2
    for step, token in enumerate([11, 12, 13]):
        assert rel_err(m.decode(token), want[len(ids) + step]) < 2e-2


def test_load_takes_the_fastest_list_measured_unless_told(tiny):
    """No rules given: the preset `auto`, on the CPU our `tuned` list (rules.AUTO), not DLight's `default`."""
    assert tiny.compiled.rules == R.describe(R.resolve("tuned", "cpu")) == R.describe(R.resolve("auto", "cpu"))
    assert R.describe(R.resolve("auto", "gpu")) == R.describe(R.resolve("fused", "gpu"))


def test_second_load_comes_from_the_cache_and_a_corrupt_entry_is_rebuilt(tiny_checkpoint, tiny):
    again = tinygpt2.load(str(tiny_checkpoint), target="llvm")
    assert again.compiled.from_cache
    ids = [464, 2068, 7586]
    np.testing.assert_array_equal(again.prefill(ids), tiny.prefill(ids))
    (again.compiled.library.parent / "meta.json").write_text("{not json")
    rebuilt = tinygpt2.load(str(tiny_checkpoint), target="llvm")
    assert not rebuilt.compiled.from_cache
    np.testing.assert_array_equal(rebuilt.prefill(ids), tiny.prefill(ids))
    rebuilt.compiled.library.write_bytes(b"\x7fELF truncated")
    again = tinygpt2.load(str(tiny_checkpoint), target="llvm")
    assert not again.compiled.from_cache
    np.testing.assert_array_equal(again.prefill(ids), tiny.prefill(ids))


def test_one_decode_call_timed_right_after_a_prefill(tiny):
    """bench times the compiled decode alone by replaying it on the executor's position tensor; right after a
    prefill no decode has set that tensor yet (it was uninitialised memory once, and replays wrote the
    cache wherever it pointed: a segfault)."""
    from tinygpt2 import bench

    tiny.prefill([464, 2068, 7586])
    assert bench._decode_call_time(tiny, repeats=3) > 0
    assert tiny.executor._decode_pos.numpy().tolist() == [2]          # the cache's last position, again


def test_the_transformers_peer_of_the_bundled_model(monkeypatch):
    """bench's HF peer builds transformers' model from the shapes alone: for `shakespeare` from its bundled
    config.json, never from the Hub (it used to ask the Hub for a model named 'shakespeare')."""
    pytest.importorskip("transformers")
    from tinygpt2 import bench, weights

    def no_checkpoint_load(*args, **kwargs):
        raise AssertionError("the peer needs no weights")
    monkeypatch.setattr(weights, "load_checkpoint", no_checkpoint_load)
    row = bench.bench_hf("shakespeare", "float32", prompt_lens=(16,), decode_prompt=16, decode_tokens=2, repeats=1,
                         device="cpu")
    assert row.system == "hf-eager" and row.prefill_tok_s[16] > 0 and row.decode_tok_s > 0


def test_sampling_on_the_device_needs_a_gpu_target(tiny):
    from tinygpt2.errors import GenerationError
    assert not tiny.executor.samples_on_device                        # llvm builds have no decode_sample
    with pytest.raises(GenerationError, match="GPU target"):
        tiny.generate([1, 2, 3], max_new_tokens=4, temperature=0.8, sample_on="device")
    with pytest.raises(GenerationError, match="sample_on"):
        tiny.generate([1, 2, 3], max_new_tokens=4, temperature=0.8, sample_on="gpu")
