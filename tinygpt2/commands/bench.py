"""`tinygpt2 bench`: speed tables (Markdown + CSV) of tinygpt2 beside transformers, with the roofline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ALL_MODELS = "random:gpt2,random:gpt2-medium,random:gpt2-large,random:gpt2-xl"
PEERS = ("hf-eager", "hf-compiled")


def register(sub, add_model_args):
    p = sub.add_parser("bench", help="prefill/decode speed beside HF transformers (a benchmark, not a test)")
    add_model_args(p, model=None, dtype=None)                 # one-item forms of --models / --dtypes
    p.add_argument("--models", default=None,
                   help=f"comma-separated (default: {ALL_MODELS} on a GPU, random:gpt2 on llvm)")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated (default: float16,float32 on a GPU, float32 on llvm)")
    p.add_argument("--prompt-lens", default="128,512,1024", help="prefill lengths (those past the context: left out) (default: 128,512,1024)")
    p.add_argument("--decode-tokens", type=int, default=256, help="decoded after a 128-token prompt (default: 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement, after a warm-up; "
                   "the median is reported (default: 5)")
    p.add_argument("--peers", default="hf-eager,hf-compiled",
                   help="hf-eager, hf-compiled, or none (hf-compiled: CUDA only; no peer on webgpu)")
    p.add_argument("--hf-compiled-models", default="random:gpt2,random:gpt2-xl",
                   help="models to run hf-compiled on (torch.compile takes minutes per shape)")
    p.add_argument("--hf-compiled-dtypes", default="float16", help="dtypes to run hf-compiled in")
    p.add_argument("--profile", action="store_true", help="per-kernel time of one decode step and one prefill")
    p.add_argument("--profile-prefill-len", type=int, default=128, help="prompt length of the profiled prefill")
    p.add_argument("--out", default=None, help="directory for bench.md and bench.csv")
    p.set_defaults(handler=run)


def _gpu_mib() -> float:
    """This process's device memory as nvidia-smi reports it (includes the CUDA context)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0.0
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(mib)
    return 0.0


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _whole_numbers(flag: str, text: str) -> tuple[int, ...]:
    from tinygpt2.errors import BenchError

    try:
        return tuple(int(x) for x in _items(text))
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None


def run(args) -> int:
    from tinygpt2 import bench as B
    from tinygpt2.dtypes import DTYPES
    from tinygpt2.errors import BenchError, DTypeError

    gpu = args.target != "llvm"
    models = _items(args.model or args.models or (ALL_MODELS if gpu else "random:gpt2"))
    dtypes = _items(args.dtype or args.dtypes or ("float16,float32" if gpu else "float32"))
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise DTypeError(f"--dtypes: unsupported {', '.join(bad) or '(none)'}: choose float32, float16 or both")
    lens = _whole_numbers("--prompt-lens", args.prompt_lens)
    if not lens:
        raise BenchError("--prompt-lens needs at least one prompt length")
    B.check_workload(None, lens, 128, args.decode_tokens, args.repeats)
    if args.profile_prefill_len < 1:
        raise BenchError(f"--profile-prefill-len must be >= 1, got {args.profile_prefill_len}")
    for model in models:                     # what fails after a model's compile and run, checked before any
        cfg = B.peek_config(model)
        if cfg is not None:
            B.check_workload(cfg.n_positions, lens, 128, args.decode_tokens, args.repeats)
            if args.profile and args.profile_prefill_len > cfg.n_positions:
                raise BenchError(f"--profile-prefill-len {args.profile_prefill_len} is past {model}'s context "
                                 f"({cfg.n_positions} positions)")
    peers = [] if args.peers == "none" else _items(args.peers)
    bad = [p for p in peers if p not in PEERS]
    if bad or not peers and args.peers != "none":
        raise BenchError(f"--peers: unknown {', '.join(bad) or '(none)'}: choose from {', '.join(PEERS)}, or none")
    if args.target == "webgpu":
        peers = []
    if args.target == "cuda":
        from tinygpt2 import targets as TG
        TG.device("cuda")                                  # no GPU: say so before compiling anything
    if args.target == "llvm":
        peers = [p for p in peers if p == "hf-eager"]          # beside the CPU target: torch on the CPU
    rows, roofline, profiles = [], {}, []
    bw = B.copy_bandwidth() if args.target == "cuda" else None
    if bw:
        print(f"device-to-device copy bandwidth: {bw / 1e9:.0f} GB/s", file=sys.stderr)
    for model in models:
        for dtype in dtypes:
            row, m = B.bench_ours(model, args.target, dtype, args.rules, lens, 128, args.decode_tokens, args.repeats,
                                  log=lambda line: print(line, file=sys.stderr, flush=True))
            if args.target == "cuda":
                row.peak_mem_mib = _gpu_mib()
            if args.target == "webgpu":
                row.note = "; ".join([f"{m.executor.adapter_name}: {m.executor.dispatches_per_step['decode']} dispatches, "
                                      "1 submit per decode step", *([row.note] if row.note else [])])
            rows.append(row)
            print(B.to_markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)
            if bw:
                roofline[(model, dtype)] = bw / B.decode_bytes_per_token(m.config, dtype, 128 + args.decode_tokens // 2)
            if args.profile and args.target in ("llvm", "cuda"):
                for fn, n in (("decode", 1), ("prefill", args.profile_prefill_len)):
                    profiles.append((model, dtype, fn, n, B.profile(m, fn, n, 128 if fn == "decode" else 0)))
            del m
    # the peers after every row of ours: torch's allocations and CUDA graphs stay in the process once made
    # (gpt2-xl's decode measured after gpt2's peers: 684 tok/s and 1466 us a call, against 714-715 and 1407
    # with no peer before it; H200, docs/results/cuda_h200_head_12e6021_and_sampling.md)
    for model in models:
        for dtype in dtypes:
            for peer in peers:
                if peer == "hf-compiled" and (model not in args.hf_compiled_models.split(",")
                                              or dtype not in args.hf_compiled_dtypes.split(",")):
                    continue
                try:
                    rows.append(B.bench_hf(model, dtype, peer == "hf-compiled", lens, 128, args.decode_tokens,
                                           args.repeats, device="cpu" if args.target == "llvm" else "cuda"))
                    print(B.to_markdown([rows[-1]]).splitlines()[-1], file=sys.stderr, flush=True)
                except Exception as e:        # a peer failing must not lose our numbers
                    print(f"{peer} {model} {dtype} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    order = [(m, d) for m in models for d in dtypes]              # the table: each model and dtype's rows together
    rows.sort(key=lambda r: order.index((r.model, r.dtype)))       # (a stable sort: ours first, then the peers)
    table = B.to_markdown(rows, roofline or None)
    notes = [f"- {r.system} {r.model} {r.dtype}: {r.note}" for r in rows if r.note]
    report = [table, *notes]
    if bw:
        report.append(f"\nroofline = D2D copy bandwidth ({bw / 1e9:.0f} GB/s, read+write) / bytes of weights and "
                      "KV cache read per decode token (context 256)")
    for model, dtype, fn, n, prof in profiles:
        total = sum(t for _, t, _ in prof)
        report.append(f"\n#### profile: {model} {dtype} {fn} (n={n}), {total * 1e6:.0f} us of kernels\n")
        report.append("| kernel | launches | us | share |\n|---|---|---|---|")
        report += [f"| {k} | {c} | {t * 1e6:.1f} | {100 * t / total:.1f}% |" for k, t, c in prof]
    text = "\n".join(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(text + "\n")
        (out / "bench.csv").write_text(B.to_csv(rows))
    return 0
