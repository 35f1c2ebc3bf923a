"""The `tinygpt2` command. The only place that turns the library's typed errors into one-line
messages and exit codes: bad input never prints a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from tinygpt2.errors import TinyGPT2Error

DEFAULT_PROMPT = "Hello, I'm a language model,"
# modules under tinygpt2/commands/ with `register(subparsers, add_model_args)`; each sets `handler`
SUBCOMMANDS = [name for name in ("step", "explain", "bench", "ablate")
               if (Path(__file__).parent / "commands" / f"{name}.py").exists()]


def _model_args(p: argparse.ArgumentParser, *, model: str | None = "gpt2", dtype: str | None = "float32",
                rules: str = "auto"):
    """The model/target flags every command shares. bench passes model=None, dtype=None: there --model and
    --dtype are one-item forms of its --models and --dtypes, whose defaults apply. explain passes
    rules="default": it studies DLight's own list; the commands that run the model take the fastest."""
    after = " (default: see --models)" if model is None else f" (default: {model})"
    p.add_argument("--model", default=model,
                   help="Hub id (gpt2, gpt2-medium, ..., owner/name), a local checkpoint directory, "
                        "'shakespeare' (bundled) or random:<size>" + after)
    p.add_argument("--target", default="llvm",
                   help="llvm (CPU), cuda, webgpu; rocm and metal build code only (tinygpt2 explain) (default: llvm)")
    p.add_argument("--dtype", default=dtype,
                   help="float32 or float16" + (" (default: see --dtypes)" if dtype is None else f" (default: {dtype})"))
    why = ("the fastest list measured: tuned on llvm, fused on a GPU" if rules == "auto" else
           "DLight's own list" if rules == "default" else "")
    p.add_argument("--rules", default=rules,
                   help="DLight rule list: a preset (auto, default, tuned, fused, none, gemv, ...), names "
                        f"'gemv,reduction,fallback' or module:attr (default: {rules}{' = ' + why if why else ''})")
    p.add_argument("--arch", default=None, help="for a target with no device here to ask: a CUDA arch (e.g. sm_90a), "
                                                "or on llvm an LLVM CPU name (e.g. znver4)")
    p.add_argument("--no-cache", action="store_true", help="compile afresh, do not read or write the cache")


def prompt_text(prompt: str) -> str:
    """--prompt as typed: the two characters \\n become a newline (shells make a real one awkward to type);
    nothing else is unescaped, so backslashes and non-ASCII text stay as they are."""
    return prompt.replace("\\n", "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tinygpt2", description="GPT-2 on hand-written TVM kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
    _model_args(g)
    g.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help=f"text to continue; \\n in it is a newline (default: {DEFAULT_PROMPT!r})".replace("%", "%%"))
    g.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens; generation also "
                   "ends at <|endoftext|>, a --stop string or the model's context (default: 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None, help="with --temperature > 0: keep the k most probable tokens")
    g.add_argument("--top-p", type=float, default=None,
                   help="with --temperature > 0: keep the most probable tokens whose mass reaches p")
    g.add_argument("--seed", type=int, default=None, help="with --temperature > 0: the random stream's seed")
    g.add_argument("--sample-on", choices=("auto", "device", "host"), default="auto",
                   help="where tokens are drawn when --temperature > 0: auto (default) = the device on CUDA and "
                        "WebGPU GPUs, the host on CPUs; device draws from the same distribution with its own "
                        "random stream (same seed, other tokens than the host)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.set_defaults(handler=cmd_generate)
    for name in SUBCOMMANDS:            # step, explain, bench, ablate: one module each, registering itself
        importlib.import_module(f"tinygpt2.commands.{name}").register(sub, _model_args)
    return ap


def cmd_generate(args) -> int:
    import tinygpt2
    from tinygpt2.runtime.sampling import check_args
    from tinygpt2.runtime.generate import prompt_ids
    from tinygpt2.errors import GenerationError

    if args.max_new_tokens < 0:          # check cheap arguments before loading and compiling anything
        raise GenerationError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    check_args(args.temperature, args.top_k, args.top_p, args.seed, args.stop)
    if args.sample_on == "device" and args.temperature > 0 and args.target not in ("cuda", "webgpu"):
        raise GenerationError(f"--sample-on device needs a GPU target (cuda, webgpu), not {args.target}")
    prompt = prompt_text(args.prompt)
    m = tinygpt2.load(args.model, target=args.target, dtype=args.dtype, rules=args.rules, arch=args.arch,
                      cache=not args.no_cache)
    if args.target == "webgpu":
        print(f"WebGPU adapter: {m.executor.adapter_name}", file=sys.stderr, flush=True)
    ids = prompt_ids(m.tokenizer, prompt, m.config.n_positions)   # too long: the error, not the prompt echoed
    print(prompt, end="", flush=True)
    out = m.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, seed=args.seed, stop=args.stop, sample_on=args.sample_on,
                     stream=lambda piece: print(piece, end="", flush=True))
    print(flush=True)
    print(f"[{args.target} {args.dtype}] {out.stats.line()}", file=sys.stderr)
    if out.stop_reason == "context":
        print(f"[stopped at the model's context of {m.config.n_positions} tokens]", file=sys.stderr)
    return 0




def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except TinyGPT2Error as e:
        print(f"tinygpt2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as e:           # a bug, not bad input: still one line, with a hint to get the trace
        if os.environ.get("TINYGPT2_DEBUG"):
            raise
        print(f"tinygpt2: internal error: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
              " (set TINYGPT2_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
