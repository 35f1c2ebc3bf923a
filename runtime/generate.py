"""The generation loop, in small functions (gpt-fast style): prefill the prompt, then sample and
decode one token at a time until EOS, a stop string, max_new_tokens or the end of the context."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinygpt2.errors import ContextOverflowError, GenerationError

from .sampling import check_args, sample

GREEDY_CHUNK = 16        # greedy steps queued on the device in the first host round trip ...
GREEDY_CHUNK_MAX = 64    # ... and at most in any later one (at most 63 steps wasted at EOS)


def greedy_chunk(done: int) -> int:
    """Greedy steps to queue on the device after `done` greedy tokens: as many as there are so far,
    16 to 64 (16, 16, 32, 64, 64, ...). Each round trip costs the device an idle gap (the host waits
    for the ids, then starts the next run of steps): on an H200, gpt2's greedy loop took 267 us a token
    with 16 steps a trip against 256 us for the step in the CUDA graph, and 247 us with these. A short
    generation still sees its first tokens after 16 steps, and a stop wastes at most half of what it
    generated (and never more than 63 steps)."""
    return min(GREEDY_CHUNK_MAX, max(GREEDY_CHUNK, done))


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0          # prefill call, prompt -> logits
    decode_s: float = 0.0           # all decode calls
    ttft_s: float = 0.0             # start -> first new token sampled

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1           # the first new token comes from prefill's logits
        return steps / self.decode_s if steps > 0 and self.decode_s else 0.0

    def line(self) -> str:
        if self.prefill_s == 0.0:                 # max_new_tokens = 0: nothing ran
            return f"prompt {self.prompt_tokens} tok, no new token asked for: nothing run"
        return (f"prefill {self.prompt_tokens} tok at {self.prefill_tok_s:.1f} tok/s, "
                f"decode {self.new_tokens} tok at {self.decode_tok_s:.1f} tok/s, "
                f"time to first token {self.ttft_s * 1000:.1f} ms")


@dataclass
class Generation:
    text: str                       # the generated text (prompt excluded, stop string excluded)
    ids: list[int]                  # the generated token ids (EOS excluded)
    stats: Stats = field(default_factory=Stats)
    stop_reason: str = ""           # "eos", "stop", "max_new_tokens" or "context"


class _TextStream:
    """Turns token ids into text incrementally: never emits half a UTF-8 character, and holds back
    text that could still turn out to be the start of a stop string."""

    def __init__(self, tokenizer, stop: list[str], callback: Callable[[str], None] | None):
        self.tok, self.stop, self.callback = tokenizer, stop, callback
        self.raw = b""
        self.emitted = 0                       # characters of `text` already passed to callback
        self.hit = -1                          # index in text where a stop string starts

    def push(self, token: int) -> bool:
        """Adds a token; returns True when a stop string has appeared."""
        self.raw += self.tok.decode_bytes([token])
        text = self.text
        for s in self.stop:
            i = text.find(s)
            if i >= 0 and (self.hit < 0 or i < self.hit):
                self.hit = i
        hold = max((len(s) - 1 for s in self.stop), default=0)
        self._emit(len(text) if self.hit < 0 and not hold else (self.hit if self.hit >= 0 else len(text) - hold))
        return self.hit >= 0

    @property
    def text(self) -> str:
        # decode only complete characters: a trailing partial UTF-8 sequence waits for the next token
        data = self.raw
        for cut in range(min(3, len(data)), 0, -1):
            lead = data[-cut]
            need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
            if need > cut:
                data = data[:-cut]
                break
        text = data.decode("utf-8", errors="replace")
        return text if self.hit < 0 else text[: self.hit]

    def finish(self) -> str:
        text = self.raw.decode("utf-8", errors="replace")
        text = text if self.hit < 0 else text[: self.hit]
        self._emit(len(text), text)
        return text

    def _emit(self, upto: int, text: str | None = None):
        text = self.text if text is None else text
        if self.callback and upto > self.emitted:
            self.callback(text[self.emitted:upto])
        self.emitted = max(self.emitted, upto)


def prompt_ids(tokenizer, prompt, n_ctx: int) -> list[int]:
    """The prompt's token ids (text is encoded; ids are taken as they are); ContextOverflowError if they do
    not fit the model's context of n_ctx positions."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        ids = [tokenizer.eos_id]         # GPT-2 convention: an empty prompt starts after <|endoftext|>
    if len(ids) > n_ctx:
        raise ContextOverflowError(f"prompt of {len(ids)} tokens is longer than the model's context of {n_ctx}")
    return ids


def generate(executor, tokenizer, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, stream: Callable[[str], None] | None = None,
             sample_on: str = "auto") -> Generation:
    """Generate a continuation of `prompt` (text or token ids).

    sample_on: where a token is drawn when temperature > 0: "device" (GPU targets: decode_sample,
    kernels/sample.py; the same distribution as the host's, its own random stream, so the same seed
    gives other tokens than on the host), "host" (runtime/sampling.py), or "auto": the device on CUDA
    and on a WebGPU GPU, the host on a CPU (llvm, or WebGPU on a CPU adapter such as llvmpipe, where
    the host is faster). Greedy (temperature 0) takes its argmax on the device wherever it can.
    """
    if sample_on not in ("auto", "device", "host"):
        raise GenerationError(f"sample_on must be 'auto', 'device' or 'host', got {sample_on!r}")
    if sample_on == "device" and temperature > 0 and not getattr(executor, "samples_on_device", False):
        raise GenerationError("sampling on the device needs a GPU target (cuda, webgpu)")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_args(temperature, top_k, top_p, seed, stop)
    n_ctx = executor.config.n_positions
    ids = prompt_ids(tokenizer, prompt, n_ctx)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    rng = np.random.default_rng(seed)
    out = Generation("", [], Stats(prompt_tokens=len(ids)), "max_new_tokens")
    if max_new_tokens == 0:
        return out
    text = _TextStream(tokenizer, stops, stream)

    # greedy on a VM or WebGPU target: argmax on the device, greedy_chunk() steps queued at a time (see
    # VMExecutor.greedy); sampling likewise on a GPU (VMExecutor.sample); `ahead` holds tokens computed
    # but not consumed yet
    if temperature == 0:
        on_device = hasattr(executor, "greedy")
    else:
        on_device = sample_on == "device" or (sample_on == "auto"
                                              and getattr(executor, "samples_on_device_by_default", False))
        if on_device:       # the device's seed, drawn from the host's generator (so from `seed`), once
            knobs = [temperature, top_k or executor.config.vocab_size, top_p or 1.0, int(rng.integers(0, 2 ** 24))]
    ahead: list[int] = []

    t0 = time.perf_counter()
    logits = executor.prefill(ids)
    out.stats.prefill_s = time.perf_counter() - t0
    t_decode = 0.0
    while True:
        token = ahead.pop(0) if ahead else sample(logits, temperature, top_k, top_p, rng)
        if not out.ids and out.stats.ttft_s == 0.0:
            out.stats.ttft_s = time.perf_counter() - t0
        if token == tokenizer.eos_id:
            out.stop_reason = "eos"
            break
        out.ids.append(token)
        if text.push(token):
            out.stop_reason = "stop"
            break
        if len(out.ids) >= max_new_tokens:
            break
        if executor.cache.length - len(ahead) >= n_ctx:          # the sequence's length, steps ahead excluded
            out.stop_reason = "context"
            break
        if ahead:
            continue                                      # already appended to the cache, on the device
        t1 = time.perf_counter()
        if on_device:
            count = min(greedy_chunk(len(out.ids)), max_new_tokens - len(out.ids), n_ctx - executor.cache.length)
            ahead = executor.greedy(token, count) if temperature == 0 else executor.sample(token, count, knobs)
        else:
            logits = executor.decode(token)
        t_decode += time.perf_counter() - t1
    if ahead:
        # stopped with steps run ahead: the cache holds the consumed tokens only, as without them
        executor.cache.commit(executor.cache.length - len(ahead))
    out.stats.decode_s = t_decode
    out.stats.new_tokens = len(out.ids)
    out.text = text.finish()
    return out
