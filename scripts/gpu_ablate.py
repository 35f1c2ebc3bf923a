"""Rule-list ablation on one machine: prefill and decode tok/s of every rule preset, and the speedup
over `none`, as Markdown + CSV. (`tinygpt2 ablate` is the full tool; this script is the minimal
loop used on the GPU machine, where device time is scarce.)

    python scripts/gpu_ablate.py --target cuda --model random:gpt2 --dtype float16 --out DIR
"""

import argparse
import gc
import sys
import time
from pathlib import Path

from tinygpt2 import bench as B
from tinygpt2 import rules as R
from tinygpt2.errors import TinyGPT2Error
from tinygpt2.targets import kind

ORDER_GPU = ["none", "matmul", "gemv", "low-batch-gemv", "reduction", "general-reduction", "rmsnorm", "transpose",
             "default", "default-minus-matmul", "default-minus-gemv", "default-minus-reduction",
             "default-minus-general-reduction"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cuda")
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--lists", default=None, help="comma-separated presets (default: all, none first)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    presets = R.presets(kind(args.target))
    lists = args.lists.split(",") if args.lists else [p for p in ORDER_GPU if p in presets] if kind(args.target) == "gpu" \
        else list(presets)
    rows = []
    for name in lists:
        t = time.time()
        try:
            row, m = B.bench_ours(args.model, args.target, args.dtype, name, (args.prompt_len,), args.prompt_len,
                                  args.decode_tokens, args.repeats)
            fired = {}
            for rule in m.rule_of.values():
                fired[rule] = fired.get(rule, 0) + 1
            rows.append((name, row.prefill_tok_s[args.prompt_len], row.decode_tok_s, fired, ""))
            del m
        except TinyGPT2Error as e:
            rows.append((name, 0.0, 0.0, {}, str(e)))
        gc.collect()
        print(f"{name}: {rows[-1][1]:.0f} / {rows[-1][2]:.1f} tok/s ({time.time() - t:.0f} s) {rows[-1][4]}",
              file=sys.stderr, flush=True)
    base = next((r for r in rows if r[0] == "none" and r[1]), None)
    md = [f"{args.model} {args.dtype} on {args.target}: prefill of {args.prompt_len} tokens, decode of "
          f"{args.decode_tokens} tokens after it (median of {args.repeats})", "",
          "| rule list | rules | prefill tok/s | decode tok/s | prefill x none | decode x none | kernels per rule |",
          "|---|---|---|---|---|---|---|"]
    csv = ["rule_list,rules,prefill_tok_s,decode_tok_s,prefill_speedup,decode_speedup,error"]
    for name, pre, dec, fired, err in rows:
        rl = "+".join(presets.get(name, [name]))
        sp = f"{pre / base[1]:.2f}" if base and pre else "-"
        sd = f"{dec / base[2]:.2f}" if base and dec else "-"
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(fired.items(), key=lambda kv: str(kv[0])))
        md.append(f"| {name} | {rl} | {pre:.0f} | {dec:.1f} | {sp} | {sd} | {kinds or err} |")
        csv.append(f"{name},{rl},{pre:.2f},{dec:.3f},{sp},{sd},\"{err}\"")
    text = "\n".join(md)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"ablate_{args.target}_{args.model.replace(':', '-')}_{args.dtype}"
        (out / f"{stem}.md").write_text(text + "\n")
        (out / f"{stem}.csv").write_text("\n".join(csv) + "\n")


if __name__ == "__main__":
    main()
