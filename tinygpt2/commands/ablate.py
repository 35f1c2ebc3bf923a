"""`tinygpt2 ablate`: every rule list on every target, measured -- ablate.md, ablate.csv, PNG charts.

    tinygpt2 ablate --model random:gpt2 --targets llvm,webgpu --out out/ablate
    tinygpt2 ablate --model shakespeare --targets webgpu --rule-lists none,gemv,default,default-minus-gemv --out DIR
    tinygpt2 ablate --model random:gpt2 --targets cuda --dtype float16 --per-kernel --out DIR
"""

from __future__ import annotations

import sys


def register(sub, add_model_args):
    p = sub.add_parser("ablate", help="prefill/decode speed of every DLight rule list on each target (a benchmark)",
                       description="Compile and time the model under each rule list on each target: tok/s, "
                                   "speedup over 'none', kernels scheduled per rule; Markdown, CSV and PNG charts.")
    # not add_model_args: this command takes several targets and several rule lists
    p.add_argument("--model", default="random:gpt2",
                   help="as for generate: Hub id, local directory, 'shakespeare' or random:<size> "
                        "(default: random:gpt2)")
    p.add_argument("--targets", default="llvm", help="comma-separated: llvm, cuda, webgpu (default: llvm)")
    p.add_argument("--dtype", default="float32", help="float32 or float16 (default: float32)")
    p.add_argument("--rule-lists", default=None,
                   help="comma-separated presets (none, gemv, ..., default, default-minus-gemv, ...) or rule "
                        "names joined by '+' (matmul+gemv+fallback); default: every preset of each target's kind. "
                        "'none' is always measured: speedups divide by it")
    p.add_argument("--prompt-len", type=int, default=128, help="prefill length, and the prompt before decode")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="prefill timings per list (median)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every list this many times, round-robin, and report medians (noisy machines)")
    p.add_argument("--per-kernel", action="store_true",
                   help="also time each kernel of one decode step and one prefill (llvm, cuda) and report which "
                        "kernels each list made faster than 'none'")
    p.add_argument("--profile-repeats", type=int, default=10, help="launches per kernel with --per-kernel")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts (no matplotlib needed)")
    p.add_argument("--out", default=None, help="directory for ablate.md, ablate.csv and the charts "
                                                "(without it the table is only printed)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tinygpt2 import ablate as A
    from tinygpt2.errors import TargetError, TinyGPT2Error
    from tinygpt2.targets import RUNNABLE, TARGETS

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in RUNNABLE]
    if bad or not targets:
        raise TargetError(f"--targets: {', '.join(bad) or '(none)'} cannot run here; choose from "
                            f"{', '.join(RUNNABLE)}" + (" (rocm/metal only generate code)" if set(bad) & set(TARGETS)
                                                         else ""))
    for name, value in (("--prompt-len", args.prompt_len), ("--decode-tokens", args.decode_tokens),
                        ("--repeats", args.repeats), ("--rounds", args.rounds), ("--profile-repeats", args.profile_repeats)):
        if value < 1:
            raise TinyGPT2Error(f"{name} must be >= 1, got {value}")
    if args.out and not args.no_charts:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise TinyGPT2Error("charts need matplotlib: pip install 'tinygpt2[plots]', or pass --no-charts") from None
    result = A.run(args.model, targets, args.dtype, args.rule_lists, prompt_len=args.prompt_len,
                   decode_tokens=args.decode_tokens, repeats=args.repeats, rounds=args.rounds,
                   per_kernel=args.per_kernel, profile_repeats=args.profile_repeats,
                   log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(A.to_markdown(result))
    if args.out:
        paths = A.write(result, args.out, charts=not args.no_charts)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
