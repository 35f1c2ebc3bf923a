"""On the GPU machine: where a decode step's time goes *inside* its CUDA graph, from Nsight Systems.

    python3 scripts/nsys_decode.py random:gpt2 float16 default [steps] [--out DIR]

Runs scripts/ncu_decode.py under `nsys profile --cuda-graph-trace=node` (every kernel of the replayed
graph traced with its own start and end), then prints per kernel the median time per step, and
per step its span (first kernel start to last kernel end) and the idle gaps between kernels. Unlike
ncu (each kernel replayed alone, caches warm) and time_evaluator (each kernel in a loop), these are
the kernels as they run in the graph: weights cold, launches back to back.
"""

import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict


def trace(model, dtype, rules, steps, out):
    rep = os.path.join(out, f"decode_{model.replace(':', '-')}_{dtype}_{rules}")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(["nsys", "profile", "-f", "true", "-o", rep, "--trace=cuda", "--cuda-graph-trace=node",
                    sys.executable, os.path.join(here, "ncu_decode.py"), model, dtype, rules, str(steps)],
                   check=True, cwd="/tmp", stdout=subprocess.DEVNULL)
    text = subprocess.run(["nsys", "stats", "-q", "--report", "cuda_gpu_trace", "--format", "csv", "--output", "-",
                           rep + ".nsys-rep"], check=True, capture_output=True, text=True).stdout
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('"Start') or ln.startswith("Start"))
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def summarize(rows, label):
    col = lambda r, *names: next(r[k] for k in r if any(k.startswith(n) for n in names))
    kern = [(int(col(r, "Start")), int(col(r, "Duration")), col(r, "Name")) for r in rows]
    kern = [k for k in kern if "_n1" in k[2]]                  # the decode functions' kernels
    # steps: each starts with the embedding kernel
    steps, cur = [], []
    for k in sorted(kern):
        if k[2].startswith("embedding") and cur:
            steps.append(cur)
            cur = []
        cur.append(k)
    steps.append(cur)
    steps = steps[2:] or steps                                # skip the capture and the first replay
    per = defaultdict(list)
    spans, gaps = [], []
    for s in steps:
        t = defaultdict(float)
        for st, du, name in s:
            t[name.split("_kernel")[0]] += du / 1e3
        for name, us in t.items():
            per[name].append(us)
        spans.append((s[-1][0] + s[-1][1] - s[0][0]) / 1e3)
        gaps.append(sum(max(0, b[0] - (a[0] + a[1])) for a, b in zip(s, s[1:])) / 1e3)
    n = len(s)
    print(f"\n#### {label}: {len(steps)} steps, {n} kernels a step; span {statistics.median(spans):.1f} us "
          f"(kernels {statistics.median(spans) - statistics.median(gaps):.1f} us, gaps between them "
          f"{statistics.median(gaps):.1f} us)\n")
    print("| kernel | us per step | share of kernel time |\n|---|---|---|")
    tot = sum(statistics.median(v) for v in per.values())
    for name, v in sorted(per.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"| {name} | {statistics.median(v):.1f} | {100 * statistics.median(v) / tot:.1f}% |")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--out")]
    out = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")), tempfile.mkdtemp())
    model, dtype, rules = args[:3]
    steps = int(args[3]) if len(args) > 3 else 20
    os.makedirs(out, exist_ok=True)
    summarize(trace(model, dtype, rules, steps, out), f"{model} {dtype} --rules {rules}, in the CUDA graph (nsys)")


if __name__ == "__main__":
    main()
