"""On the GPU machine: tinygpt2's logits on cuda and webgpu against a CUDA-free reference
(transformers on the CPU, float32), for prefill and 16 decode steps, on random gpt2 weights saved
as an HF checkpoint (or other widths: --n-embd, --n-head). Prints a table; exits non-zero if a tolerance is
missed (fp32 1e-4, fp16 2e-2).

    python scripts/gpu_check.py [--targets cuda,webgpu] [--dtypes float32,float16]
"""

import argparse
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import tinygpt2

TOL = {"float32": 1e-4, "float16": 2e-2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="cuda,webgpu")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rules", default="default")
    ap.add_argument("--n-layer", type=int, default=12, help="fewer layers for a quick local run")
    ap.add_argument("--n-embd", type=int, default=768, help="1600 (n-head 25): gpt2-xl's widths")
    ap.add_argument("--n-head", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)
    # gpt2 (124M) shapes by default, random weights
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)).eval()
    ckpt = tempfile.mkdtemp(prefix="gpt2-random-")
    hf.save_pretrained(ckpt)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, 128).tolist()
    follow = rng.integers(0, 50257, args.steps).tolist()
    with torch.no_grad():
        want = hf(torch.tensor([ids + follow])).logits[0].numpy()     # CPU, float32
    rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))   # noqa: E731
    ok = True
    print("| target | dtype | prefill rel err (n=128, 37) | worst decode rel err (16 steps) | tolerance "
          "| greedy on device = host | sampled on device, kept by the host | ok | load s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target in args.targets.split(","):
        for dtype in args.dtypes.split(","):
            t = time.time()
            m = tinygpt2.load(ckpt, target=target, dtype=dtype, rules=args.rules, progress=False)
            load_s = time.time() - t
            # first a length that is no multiple of any tile (tensor-core matmuls pad n up to 128), then
            # the prompt the decode steps continue
            e0 = rel(m.prefill(ids[:37]), want[36])
            e0 = max(e0, rel(m.prefill(ids), want[len(ids) - 1]))
            ed = max(rel(m.decode(tok), want[len(ids) + i]) for i, tok in enumerate(follow))
            same = "-"
            if hasattr(m.executor, "greedy"):          # 40 greedy ids: argmax on the device vs numpy's
                tok = int(np.argmax(m.prefill(ids)))
                host = []
                for _ in range(40):
                    tok = int(np.argmax(m.decode(tok)))
                    host.append(tok)
                tok = int(np.argmax(m.prefill(ids)))
                dev = m.executor.greedy(tok, 16) + m.executor.greedy(host[15], 16) + m.executor.greedy(host[31], 8)
                same = "yes" if dev == host else f"NO ({sum(a == b for a, b in zip(dev, host))}/40)"
            kept = sampled_check(m, ids) if getattr(m.executor, "samples_on_device", False) else "-"
            good = max(e0, ed) < TOL[dtype] and not same.startswith("NO") and not kept.startswith("NO")
            ok &= good
            print(f"| {target} | {dtype} | {e0:.2e} | {ed:.2e} | {TOL[dtype]:g} | {same} | {kept} | {'yes' if good else 'NO'} "
                  f"| {load_s:.0f} |", flush=True)
            del m
    return 0 if ok else 1


def sampled_check(m, ids, steps: int = 40) -> str:
    """40 tokens drawn on the device (decode_sample: temperature 1.2, top-k 40, top-p 0.9), replayed
    through `decode`: each must be one the host sampler keeps for its logits; the same seed twice, the
    same tokens."""
    from tinygpt2.runtime.sampling import keep

    kw = dict(max_new_tokens=steps, temperature=1.2, top_k=40, top_p=0.9, seed=5, sample_on="device")
    out = m.generate(ids, **kw)
    logits, good = m.prefill(ids), 0
    for token in out.ids:
        good += token in keep(logits, 1.2, 40, 0.9)[0]
        logits = m.decode(token)
    again = m.generate(ids, **kw).ids == out.ids
    return f"yes ({good}/{len(out.ids)})" if good == len(out.ids) and again else \
        f"NO ({good}/{len(out.ids)} kept, reproducible: {again})"


if __name__ == "__main__":
    sys.exit(main())
