"""`tinygpt2 explain`: every kernel of prefill and decode, the rule that scheduled it, and its launch.

    tinygpt2 explain --model random:gpt2 --target cuda --rules default
    tinygpt2 explain --model random:gpt2 --target cuda --kernel linear_qkv --show after,code
    tinygpt2 explain --model random:gpt2 --target webgpu --rules none --diff-rules default --kernel layernorm
    tinygpt2 explain --model shakespeare --target rocm --function decode --format json

Only the model's config is read (random:<size> needs no weights at all); nothing runs, so every
target works without its GPU (rocm and metal only generate code anyway).
"""

from __future__ import annotations

import json


def register(sub, add_model_args):
    p = sub.add_parser("explain", help="which rule scheduled each kernel, its launch configuration and its code",
                       description="For every kernel of prefill and decode: call sites, the rule that scheduled "
                                   "it, grid and block size (symbolic in n = new tokens, m = sequence length), "
                                   "shared memory per block, vector width, unrolling; optionally its TVMScript "
                                   "before/after scheduling and its generated code, or a diff against another "
                                   "rule list. Targets: llvm, cuda, webgpu, rocm, metal (no GPU needed).")
    add_model_args(p, rules="default")
    for action in p._actions:               # explain also generates code for the targets that cannot run here
        if "--target" in action.option_strings:
            action.help = "llvm (CPU), cuda, webgpu, rocm, metal (default: llvm)"
    p.add_argument("--function", default="both", choices=("prefill", "decode", "both"),
                   help="which Relax function's kernels (default: both)")
    p.add_argument("--kernel", action="append", default=None, metavar="NAME",
                   help="only this kernel (repeatable or comma-separated); a prefill name such as linear_qkv "
                        "also selects decode's linear_qkv_n1")
    p.add_argument("--show", action="append", default=None, metavar="VIEW",
                   help="also print, per kernel: before (TVMScript before scheduling), after (after "
                        "scheduling), code (CUDA C / WGSL / Metal / AMDGPU or CPU assembly), ir (LLVM IR; "
                        "llvm and rocm); repeatable or comma-separated")
    p.add_argument("--diff-rules", default=None, metavar="RULES",
                   help="print a unified diff against this rule list instead (with --show: of those views too)")
    p.add_argument("--format", default="table", choices=("table", "json"))
    p.set_defaults(handler=run)


def _split(values) -> list[str]:
    return [v.strip() for arg in values or [] for v in arg.split(",") if v.strip()]


def run(args) -> int:
    from tinygpt2 import explain as X

    show, kernels = _split(args.show), _split(args.kernel)
    X.parse_names(show, X.SHOW, "--show view")                     # cheap checks before any compiling
    X.check(args.target, args.rules, *([args.diff_rules] if args.diff_rules is not None else []), arch=args.arch)
    cfg, label = X.model_config(args.model)
    common = dict(arch=args.arch, functions=args.function, kernels=kernels, show=show, model=label)
    e = X.explain(cfg, args.target, args.dtype, args.rules, **common)
    if args.diff_rules is not None:
        other = X.explain(cfg, args.target, args.dtype, args.diff_rules, **common)
        text = X.diff(e, other, show)
        if args.format == "json":
            print(json.dumps({"a": e.to_dict(), "b": other.to_dict(), "diff": text}, indent=1))
        else:
            print(text or f"no difference between rules {args.rules!r} and {args.diff_rules!r} "
                          f"for these kernels on {args.target}", end="" if text else "\n")
        return 0
    if args.format == "json":
        print(e.to_json())
        return 0
    tgt = json.loads(e.target_str) if e.target_str.startswith("{") else {}
    detail = tgt.get("arch") or tgt.get("mcpu")
    print(f"{label} on {args.target}{f' ({detail})' if detail else ''}, {args.dtype}, "
          f"rules: {', '.join(e.rules) or '(none)'}")
    print(f"n = new tokens, m = sequence length after them; shared mem per block; "
          f"{len(e.kernels)} kernel{'s' * (len(e.kernels) != 1)}\n")
    print(e.table())
    for note in e.notes:
        print(f"\nnote: {note}")
    for title, text in e.sections(show):
        print(f"\n=== {title} ===\n{text.rstrip()}")
    return 0
