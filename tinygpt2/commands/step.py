"""`tinygpt2 step`: run the model one kernel launch at a time, checking every output against numpy.

    tinygpt2 step --model shakespeare --target webgpu --prompt "ROMEO:" --stop-at h0_probs

prints a line per launch (call site, kernel, launch grid, output shape, error relative to
`tinygpt2.reference`, OK/FAIL); with --stop-at it stops after that launch (or the first launch of
that kernel) and prints the kernel's scheduled TVMScript and some of its output values.
"""

from __future__ import annotations

import sys

import numpy as np

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


def register(sub, add_model_args):
    from tinygpt2.cli import DEFAULT_PROMPT

    p = sub.add_parser("step", help="run prefill/decode kernel by kernel, each output checked against numpy")
    add_model_args(p)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="\\n in it is a newline (default: the generate command's)")
    p.add_argument("--decode-tokens", type=int, default=0,
                   help="after the prefill, step through this many greedy decode steps (default: 0)")
    p.add_argument("--stop-at", default=None, metavar="NAME",
                   help="stop after this launch (e.g. h0_qkv) or the first launch of this kernel (e.g. layernorm, "
                        "linear_qkv_n1), and print its TVMScript and values")
    p.add_argument("--show-script", action="store_true", help="print each kernel's scheduled TVMScript when first run")
    p.add_argument("--show-values", action="store_true", help="print the first values of every output")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest error relative to the reference tensor's largest value "
                        "(default: 1e-4 for float32, 2e-2 for float16)")
    p.set_defaults(handler=run)


def _shape(outputs) -> str:
    dims = ["x".join(map(str, o.shape)) for o in outputs]
    if len(dims) > 1 and len(set(dims)) == 1:
        return f"{dims[0]} (x{len(dims)})"                  # e.g. the K and V caches
    return ", ".join(dims)


def _values(label: str, array: np.ndarray, count: int = 8) -> str:
    flat = np.asarray(array, dtype=np.float32).reshape(-1)
    head = np.array2string(flat[:count], precision=5, suppress_small=False, max_line_width=200)
    return f"{label} {head}{' ...' if flat.size > count else ''}"


def run(args) -> int:
    import tinygpt2
    from tinygpt2.cli import prompt_text
    from tinygpt2.errors import ContextOverflowError, GenerationError
    from tinygpt2.reference import Reference
    from tinygpt2.runtime.step import check_stop_at, compare, launch_names, step_through

    if args.decode_tokens < 0:
        raise GenerationError(f"--decode-tokens must be >= 0, got {args.decode_tokens}")
    if args.tolerance is not None and not args.tolerance > 0:
        raise GenerationError(f"--tolerance must be > 0, got {args.tolerance}")
    prompt = prompt_text(args.prompt)
    model = tinygpt2.load(args.model, target=args.target, dtype=args.dtype, rules=args.rules, arch=args.arch,
                          cache=not args.no_cache)
    stop_at, decode_tokens = args.stop_at, args.decode_tokens
    if stop_at is not None:
        check_stop_at(model, stop_at)                                    # StepError: lists valid names
        in_prefill = any(stop_at in (ln.name, ln.kernel) for ln in model.compiled.plans["prefill"].launches)
        if not in_prefill:
            decode_tokens = max(decode_tokens, 1)                         # a decode kernel: step one decode
    ids = model.tokenizer.encode(prompt)
    if not ids:
        raise GenerationError("the prompt encodes to no tokens")
    if len(ids) + decode_tokens > model.config.n_positions:
        raise ContextOverflowError(f"{len(ids)} prompt tokens + {decode_tokens} decode steps do not fit the model's "
                                   f"context of {model.config.n_positions}")
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]
    if args.target == "webgpu":
        print(f"WebGPU adapter: {model.executor.adapter_name}", file=sys.stderr, flush=True)
    reference = Reference.of(model)
    print(f"{args.model} on {args.target} {args.dtype}: {len(ids)} prompt tokens, {decode_tokens} decode step(s); "
          f"error = max|ours - numpy| / max|numpy| per launch, tolerance {tol:.0e}")
    print(f"{'#':>4}  {'launch':<16} {'kernel':<20} {'grid':<28} {'output':<16} {'rel err':>8}")

    failed, total, shown = [], 0, set()
    token, function = ids, "prefill"
    for step_no in range(decode_tokens + 1):
        names = launch_names(model, function)
        stop = stop_at if stop_at is not None and any(
            stop_at in (ln.name, ln.kernel) for ln in model.compiled.plans[function].launches) else None
        want = reference.prefill(token) if function == "prefill" else reference.decode(token)
        if function == "prefill":
            print(f"-- prefill: {len(ids)} tokens, n={len(ids)} m={len(ids)}, {len(names)} launches")
        else:
            print(f"-- decode {step_no}: token {token} {model.tokenizer.decode([token])!r}, n=1 "
                  f"m={model.executor.cache.length + 1}")
        last = None
        for s in step_through(model, token, function, stop_at=stop):
            err = compare(s, want)
            total += 1
            ok = err.ok(tol)
            if not ok:
                failed.append((f"{function}:{s.name}", err.rel))
            print(f"{s.index:>4}  {s.name:<16} {s.kernel:<20} {s.grid:<28} {_shape(s.outputs):<16} "
                  f"{err.rel:>8.1e}  {'OK' if ok else 'FAIL'}")
            if args.show_values:
                print("      " + _values("ours ", s.output))
            if args.show_script and s.kernel not in shown and s.script:
                shown.add(s.kernel)
                print(s.script)
            last = s
            if stop is not None and stop in (s.name, s.kernel):
                _stop_report(s, want, err)
                return 1 if failed else 0
        token, function = int(np.argmax(last.output[0])), "decode"     # greedy next token
    worst = max(failed, key=lambda f: f[1]) if failed else None
    print(f"{total} launches, {len(failed)} failed" + (f" (worst {worst[0]}: {worst[1]:.1e})" if worst else ""))
    return 1 if failed else 0


def _stop_report(s, want, err):
    ref = want[s.name]
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    print(f"\nstopped after {s.function} launch {s.index} {s.name}: kernel {s.kernel} "
          f"(scheduled by {s.rule or 'no rule'}), n={s.env['n']} m={s.env['m']}, grid {s.grid}")
    print(s.script if s.script else "(no TVMScript stored for this kernel: compile afresh with --no-cache)")
    for j, (out, r) in enumerate(zip(s.outputs, refs)):
        r = r[tuple(slice(0, d) for d in out.shape)]
        label = f"output {j}" if len(s.outputs) > 1 else "output"
        print(f"{label} {'x'.join(map(str, out.shape))} {out.dtype}: min {out.min():.5g} max {out.max():.5g} "
              f"mean {out.astype(np.float32).mean():.5g}")
        print("  " + _values("ours ", out))
        print("  " + _values("numpy", r))
    print(f"max abs error {err.abs:.2e}, relative {err.rel:.2e}")
