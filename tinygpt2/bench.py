"""Benchmarks (not tests): prefill/decode speed of tinygpt2 beside Hugging Face transformers in the
same run, the memory-bandwidth roofline of decode, and a per-kernel profile.

Timing: every call of ours returns logits to the host, which synchronises the device; medians of
repeats after warm-up. Peers are timed with torch.cuda.synchronize around each measured region.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import tinygpt2
from tinygpt2.errors import BenchError, PeerError
from tinygpt2.weights import param_shapes, peek_config

ITEMSIZE = {"float32": 4, "float16": 2}


@dataclass
class Row:
    system: str                     # "tinygpt2", "hf-eager", "hf-compiled"
    model: str
    target: str
    dtype: str
    prefill_tok_s: dict = field(default_factory=dict)     # prompt length -> tok/s
    decode_tok_s: float = 0.0
    ttft_ms: float = 0.0
    peak_mem_mib: float = 0.0
    note: str = ""


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_bytes_per_token(cfg, dtype: str, context: int) -> int:
    """Bytes a decode step must read at least: every weight once (wte once, for lm_head) + K and V so far.
    Hugging Face's parameters: the same roofline for every rule list (fused-decode's folded set reads the
    layernorms' gamma and beta no more and two float32 row-sum vectors a layer instead: gpt2-xl fp16 +0.05%)."""
    weights = sum(int(np.prod(s)) for s in param_shapes(cfg).values()) * ITEMSIZE[dtype]
    kv = 2 * cfg.n_layer * cfg.n_embd * context * ITEMSIZE[dtype]
    return weights + kv


def check_workload(n_positions: int | None, prompt_lens, decode_prompt: int, decode_tokens: int, repeats: int):
    """Raise BenchError for a request with nothing to measure (before anything is compiled, where the
    context n_positions is known without loading the model; None: not yet known)."""
    for name, value in (("decode tokens", decode_tokens), ("repeats", repeats), ("decode prompt", decode_prompt),
                        *(("prompt length", n) for n in prompt_lens)):
        if not isinstance(value, int) or value < 1:
            raise BenchError(f"{name} must be a whole number >= 1, got {value!r}")
    if n_positions is not None and decode_prompt >= n_positions:
        raise BenchError(f"a {decode_prompt}-token prompt leaves no room to decode in the model's context "
                         f"({n_positions} positions)")


def bench_ours(model: str, target: str, dtype: str, rules="auto", prompt_lens=(128, 512, 1024),
               decode_prompt: int = 128, decode_tokens: int = 256, repeats: int = 5, log=None) -> tuple[Row, object]:
    """Prefill tok/s at each prompt length that fits the context (the others are left out of the row),
    time to first token and decode tok/s over up to `decode_tokens` tokens after a `decode_prompt`-token
    prompt, greedy (and sampled where the device draws tokens). log: a callable given a line before the load
    (and the compile: minutes on 2 cores the first time), or None."""
    known = peek_config(model)
    check_workload(known.n_positions if known else None, prompt_lens, decode_prompt, decode_tokens, repeats)
    if log:
        named = rules if isinstance(rules, str) else "(a rule list)"
        log(f"loading {model} ({dtype}) for {target}, rules {named}: compiling if not cached ...")
    m = tinygpt2.load(model, target=target, dtype=dtype, rules=rules, progress=False)
    cfg = m.config
    check_workload(cfg.n_positions, prompt_lens, decode_prompt, decode_tokens, repeats)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, cfg.n_positions).tolist()
    row = Row("tinygpt2", model, target, dtype)
    for n in prompt_lens:
        if n > cfg.n_positions:
            continue
        m.prefill(ids[:n])                                           # warm-up (and first-use compiles)
        row.prefill_tok_s[n] = n / _median_time(lambda: m.prefill(ids[:n]), repeats)
    row.ttft_ms = 1000 * _median_time(lambda: int(np.argmax(m.prefill(ids[:decode_prompt]))), repeats)
    steps = min(decode_tokens, cfg.n_positions - decode_prompt)
    # greedy decode as `generate` runs it: the argmax is taken on the device and greedy_chunk() steps are
    # queued per round trip (runtime/executor.py, runtime/webgpu.py); as a second number,
    # every step's logits come to the host and numpy takes the argmax
    row.decode_tok_s = steps / _greedy_time(m, ids[:decode_prompt], steps, on_device=hasattr(m.executor, "greedy"))
    notes = []
    if hasattr(m.executor, "greedy"):
        host = steps / _greedy_time(m, ids[:decode_prompt], steps, on_device=False)
        notes.append(f"decode with logits to the host every step: {host:.0f} tok/s")
    if getattr(m.executor, "samples_on_device", False):
        # sampled decode (temperature 0.8, top-k 50, top-p 0.95), each token drawn on the device
        # (kernels/sample.py) against the logits to the host and runtime/sampling.py there
        dev, host = (steps / _sampled_time(m, ids[:decode_prompt], steps, where) for where in ("device", "host"))
        notes.append(f"sampled decode (T 0.8, top-k 50, top-p 0.95): {dev:.0f} tok/s drawn on the device, "
                     f"{host:.0f} on the host")
    step_s = _decode_call_time(m)
    if step_s:
        notes.append(f"one decode call without readback: {step_s * 1e6:.0f} us")
    row.note = "; ".join(notes)
    return row, m


def _decode_time(m, prompt, steps: int, pick, ahead=None) -> float:
    """Seconds for `steps` decode steps after prefilling `prompt` (a warm-up run first): each token
    picked on the host from the step's logits (pick(logits) -> id), or, with ahead(token, count) ->
    ids, on the device, greedy_chunk() steps a round trip as `generate` runs them."""
    from tinygpt2.runtime.generate import greedy_chunk
    for _ in range(2):                                               # warm-up run, then the measured one
        token = pick(m.prefill(prompt))
        t = time.perf_counter()
        if ahead is not None:
            done = 0
            while done < steps:
                count = min(greedy_chunk(done + 1), steps - done)     # done + 1: prefill gave one
                token = ahead(token, count)[-1]
                done += count
        else:
            for _ in range(steps):
                token = pick(m.decode(token))
        elapsed = time.perf_counter() - t
    return elapsed


def _greedy_time(m, prompt, steps: int, on_device: bool) -> float:
    return _decode_time(m, prompt, steps, lambda logits: int(np.argmax(logits)), m.executor.greedy if on_device else None)


def _sampled_time(m, prompt, steps: int, where: str, temperature=0.8, top_k=50, top_p=0.95) -> float:
    """Sampled decode: drawn on the device (kernels/sample.py) or on the host (runtime/sampling.py)."""
    from tinygpt2.runtime.sampling import sample
    rng = np.random.default_rng(0)
    on_device = lambda token, count: m.executor.sample(token, count, [temperature, top_k, top_p, 1234])  # noqa: E731
    return _decode_time(m, prompt, steps, lambda logits: sample(logits, temperature, top_k, top_p, rng),
                        on_device if where == "device" else None)


def _decode_call_time(m, repeats: int = 200) -> float | None:
    """llvm/cuda: seconds per call of the compiled `decode` alone (the VM call and the kernels or the
    CUDA graph, no host copy of the logits, no sampling), calls back to back, one sync at the end:
    about what a step costs the device when the host keeps it busy."""
    ex = m.executor
    fn = getattr(ex, "_fns", {}).get("decode")
    if fn is None or ex.cache.length == 0:
        return None
    # the cache's last position decoded again (with token 0): whatever ran last, prefill or decode steps
    ex._decode_ids.copyfrom(np.zeros(1, np.int32))
    ex._decode_pos.copyfrom(np.array([ex.cache.length - 1], np.int32))
    ex._next_on_device = None
    args = (*ex._decode_args, *ex.cache.tensors, *ex.params)
    side = ex._side.launch                    # side-prefetch: each call's prefetcher beside it (else nothing)
    ex._side.sync()
    for _ in range(10):
        side()
        fn(*args)
    ex.device.sync()
    t = time.perf_counter()
    for _ in range(repeats):
        side()
        fn(*args)
    ex.device.sync()
    return (time.perf_counter() - t) / repeats


def _import_hf():
    """(torch, transformers.GPT2Config, transformers.GPT2LMHeadModel), or a PeerError that says why not."""
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        if "from 'kernels'" in str(e):
            # transformers >= 5.25 imports the Hub's `kernels` package; Python started in this checkout's root
            # finds the folder kernels/ first (README, Layout)
            raise PeerError("transformers imported this checkout's kernels/ folder as the Hub's `kernels` package: "
                            "run from outside the checkout's root") from e
        raise PeerError(f"the transformers peers need torch and transformers ({e}): "
                        "pip install torch transformers, or --peers none") from e
    return torch, GPT2Config, GPT2LMHeadModel


def bench_hf(model: str, dtype: str, compiled: bool = False, prompt_lens=(128, 512, 1024), decode_prompt=128,
             decode_tokens=256, repeats=5, device: str = "cuda") -> Row:
    """The same workload with transformers' GPT2LMHeadModel (random weights of the same shapes),
    on `device` ("cuda", or "cpu" beside the llvm target)."""
    torch, HFConfig, GPT2LMHeadModel = _import_hf()
    from tinygpt2.weights import load_checkpoint

    # the shapes only (random weights): random:<size>, bundled and local checkpoints without loading them
    cfg = peek_config(model) or load_checkpoint(model, dtype=dtype, progress=False).config
    tdtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    hf = GPT2LMHeadModel(HFConfig(**cfg.to_dict())).to(device, tdtype).eval()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, cfg.vocab_size, (1, cfg.n_positions), device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    row = Row("hf-compiled" if compiled else "hf-eager", model, "cuda" if cuda else "cpu (torch)", dtype)
    with torch.no_grad():
        if not compiled:
            for n in prompt_lens:
                if n > cfg.n_positions:
                    continue
                hf(ids[:, :n])
                sync()
                row.prefill_tok_s[n] = n / _median_time(lambda: (hf(ids[:, :n]), sync()), repeats)

            def ttft():
                hf(ids[:, :decode_prompt]).logits[:, -1].argmax(-1).item()
            row.ttft_ms = 1000 * _median_time(ttft, repeats)
            for _ in range(2):
                out = hf(ids[:, :decode_prompt], use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                sync()
                t = time.perf_counter()
                for _ in range(decode_tokens):
                    out = hf(tok, past_key_values=past, use_cache=True)
                    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                sync()
                elapsed = time.perf_counter() - t
            row.decode_tok_s = decode_tokens / elapsed
        else:
            # the static-cache decode loop torch.compile(mode="reduce-overhead") is made for: a StaticCache
            # (fixed shapes), the one-token forward compiled with CUDA graphs, the position passed as a
            # tensor; cudagraph_mark_step_begin() tells torch each call starts a new step (the previous
            # step's outputs may be overwritten: only the argmax, computed outside the graph, is kept)
            from transformers import StaticCache
            prompt = ids[:, :decode_prompt]
            total = decode_prompt + decode_tokens + 1
            cache = StaticCache(config=hf.config, max_cache_len=total)
            positions = torch.arange(total, device=device)

            def forward(tok, cache_position):
                return hf(tok, past_key_values=cache, cache_position=cache_position, use_cache=True).logits
            step = torch.compile(forward, mode="reduce-overhead", fullgraph=True)

            def run(k) -> tuple[float, float]:
                """(prefill + first token seconds, seconds of k decode steps)"""
                cache.reset()
                sync()
                t0 = time.perf_counter()
                logits = hf(prompt, past_key_values=cache, cache_position=positions[:decode_prompt], use_cache=True).logits
                tok = logits[:, -1:].argmax(-1)
                tok.item()
                t1 = time.perf_counter()
                for i in range(k):
                    torch.compiler.cudagraph_mark_step_begin()
                    tok = step(tok, positions[decode_prompt + i:decode_prompt + i + 1])[:, -1:].argmax(-1)
                sync()
                return t1 - t0, time.perf_counter() - t1
            for _ in range(3):
                run(decode_tokens)                                    # compiles, records the graph
            runs = [run(decode_tokens) for _ in range(3)]
            row.ttft_ms = 1000 * statistics.median(r[0] for r in runs)
            row.decode_tok_s = decode_tokens / statistics.median(r[1] for r in runs)
            row.note = "prefill eager; decode: StaticCache + torch.compile(reduce-overhead)"
    if cuda:
        row.peak_mem_mib = torch.cuda.max_memory_allocated() / 2**20
        del hf
        torch.cuda.empty_cache()
    return row


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written), measured with torch."""
    import torch
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del x, y
    return 2 * (1 << 30) / statistics.median(times)


def profile(m, function: str = "decode", n: int = 1, past: int = 128, repeats: int = 50) -> list[tuple[str, float, int]]:
    """Per-kernel time of one step (llvm/cuda): [(kernel, seconds per step, launches)], slowest first.

    Each launch of the plan is timed alone with TVM's time_evaluator, on tensors of the step's shapes
    (outside any CUDA graph: in the graph a step of ~120 launches costs less than this sum).
    """
    from tinygpt2.runtime.plan import Scalar
    from tinygpt2.tvm_shim import empty, to_tensor

    if n < 1 or past + n > m.config.n_positions:
        raise BenchError(f"a {function} of {n} token(s) after {past} does not fit the model's context "
                         f"({m.config.n_positions} positions)")
    ex = m.executor
    root = m.compiled.executable
    root = getattr(root, "mod", root)                # a fresh Executable wraps the VM module
    lib = root.imports[0]                            # the kernels' host entry points
    plan = m.compiled.plans[function]
    env = {"n": n, "m": past + n}
    tmps = [empty(t.concrete(env), t.dtype, ex.device) for t in plan.tmps]
    ids = to_tensor(np.zeros(n, np.int32), ex.device)          # valid token ids: the embedding gathers by them
    pos = to_tensor(np.array([past + n - 1], np.int32), ex.device)   # decode's position input
    totals: dict[str, list] = {}
    for launch in plan.launches:
        args = []
        for a in launch.args:
            if isinstance(a, Scalar):
                args.append(a.value(env))
            elif a.kind == "ids":
                args.append(ids)
            elif a.kind == "pos":
                args.append(pos)
            elif a.kind == "cache":
                args.append(ex.cache.tensors[a.index])
            elif a.kind == "param":
                args.append(ex.params[a.index])
            else:
                args.append(tmps[a.index])
        # TVM's time_evaluator: `repeats` calls back to back from C++, one sync, the median of 3 runs;
        # a launch that takes less than the ~2-3 us it costs to issue one shows that cost instead
        timer = lib.time_evaluator(launch.kernel, ex.device, number=repeats, repeat=3)
        t = timer(*args).median
        entry = totals.setdefault(launch.kernel, [0.0, 0])
        entry[0] += t
        entry[1] += 1
    return sorted(((k, v[0], v[1]) for k, v in totals.items()), key=lambda r: -r[1])


def to_markdown(rows: list[Row], roofline: dict | None = None) -> str:
    """The table: a row per system, model and dtype; with `roofline` ((model, dtype) -> tok/s), decode's share of it;
    where a peer's row has a tinygpt2 row of the same model, target and dtype beside it, how many times faster ours
    is (ours' tok/s / the peer's) at the longest prompt and in decode."""
    lens = sorted({n for r in rows for n in r.prefill_tok_s})
    ours = {}
    for r in rows:
        if r.system == "tinygpt2":
            ours.setdefault((r.model, r.target, r.dtype), r)
    def ratio(mine: float | None, peer: float | None) -> str:
        return f"{mine / peer:.1f}x" if mine and peer else "-"
    def vs_ours(r: Row) -> str:
        mine = ours.get((r.model, r.target, r.dtype))
        if r.system == "tinygpt2" or mine is None:
            return "-"
        return f"{ratio(mine.prefill_tok_s.get(lens[-1]), r.prefill_tok_s.get(lens[-1]))}, " \
               f"{ratio(mine.decode_tok_s, r.decode_tok_s)}"
    with_ratio = bool(lens) and any(vs_ours(r) != "-" for r in rows)     # (vs_ours reads lens[-1])
    head = ["system", "model", "target", "dtype", *[f"prefill@{n} tok/s" for n in lens], "decode tok/s",
            "TTFT ms", "peak MiB"]
    if with_ratio:
        head += [f"tinygpt2 / this (prefill@{lens[-1]}, decode)"]
    if roofline:
        head += ["roofline tok/s", "% roofline"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.system, r.model, r.target, r.dtype, *[f"{r.prefill_tok_s[n]:.0f}" if n in r.prefill_tok_s else "-"
                                                         for n in lens],
                 f"{r.decode_tok_s:.0f}", f"{r.ttft_ms:.1f}", f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib else "-"]
        if with_ratio:
            cells.append(vs_ours(r))
        if roofline:
            rl = roofline.get((r.model, r.dtype))
            cells += [f"{rl:.0f}" if rl else "-", f"{100 * r.decode_tok_s / rl:.0f}%" if rl else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def to_csv(rows: list[Row]) -> str:
    lines = ["system,model,target,dtype,prompt_len,prefill_tok_s,decode_tok_s,ttft_ms,peak_mem_mib"]
    for r in rows:
        for n, v in sorted(r.prefill_tok_s.items()) or [("", "")]:
            lines.append(f"{r.system},{r.model},{r.target},{r.dtype},{n},{v},{r.decode_tok_s:.2f},{r.ttft_ms:.3f},"
                         f"{r.peak_mem_mib:.1f}")
    return "\n".join(lines) + "\n"


__all__ = ["Row", "bench_ours", "bench_hf", "copy_bandwidth", "profile", "to_markdown", "to_csv",
           "decode_bytes_per_token", "asdict"]
