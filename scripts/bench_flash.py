"""On the GPU machine: prefill's one-kernel attention (kernels/flash_attention.py) alone, per tile size.

    python3 scripts/bench_flash.py [--heads 25] [--n 1024] [--layers 48]
    python3 scripts/bench_flash.py --dtype float32 [--tiles regs,pad1,pad0]

For each (warps, BK, prefetch or not) of the tensor-core variant (float16), or each version of the
CUDA-core variant (float32: "regs", a lane's operands in registers, as model.py builds it for CUDA;
"regs-WxBK", the same with W warps a block and key tiles of BK; "padP", its first version, operands read
from shared memory, its rows padded by P elements, as model.py builds it for WebGPU with P = 1): the max
abs error against numpy and the median time of one call over 5 repeats of 20 (TVM's time_evaluator,
after a warm-up), as a Markdown table; `x layers` is the time of a whole prefill's attention.
"""

import argparse
import sys

import numpy as np

from tinygpt2.kernels.flash_attention import flash_attention_ref, make_flash_attention
from tinygpt2.tvm_shim import tirx, tvm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=25)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--tiles", default=None)   # float16: warps x BK, p: prefetch; float32: regs or padP
    a = ap.parse_args()
    a.tiles = a.tiles or ("2x64p,4x64,4x64p,2x64,4x32p" if a.dtype == "float16" else "regs,pad1")
    H, D, P, n = a.heads, a.head_dim, 1024, a.n
    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    qkv = (2 * rng.standard_normal((n, 3 * H * D))).astype(a.dtype)
    k_cache = rng.standard_normal((H, P, D)).astype(a.dtype)
    v_cache = rng.standard_normal((H, P, D)).astype(a.dtype)
    want = flash_attention_ref(qkv, k_cache, v_cache, n)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    print(f"| {'warps x BK' if a.dtype == 'float16' else 'version'} | max abs err | us a call | x {a.layers} layers, ms |"
          "\n|---|---|---|---|")
    for tiles in a.tiles.split(","):
        if a.dtype == "float16":
            warps, bk = (int(v) for v in tiles.rstrip("p").split("x"))
            func = make_flash_attention(H, D, P, "float16", True, seq_len=n, warps=warps, bk=bk,
                                        prefetch=tiles.endswith("p"))
        elif tiles.startswith("regs"):     # regs[-WxBK]: warps x BK other than 1 x 32
            warps, bk = (int(v) for v in (tiles[5:] or "1x32").split("x"))
            func = make_flash_attention(H, D, P, "float32", False, True, seq_len=n, warps=warps, bk=bk)
        else:
            func = make_flash_attention(H, D, P, "float32", False, False, seq_len=n, pad=int(tiles[3:]))
        func = func.specialize({func.params[3]: tirx.IntImm("int64", n)})
        try:
            lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        except Exception as e:                                           # a layout that does not build
            print(f"| {tiles} | build failed: {str(e).splitlines()[-1][:80]} | | |")
            continue
        args = [tvm.runtime.tensor(x, dev) for x in (qkv, k_cache, v_cache, np.zeros((n, H * D), a.dtype))]
        lib["main"](*args)
        err = float(np.max(np.abs(args[-1].numpy().astype(np.float32) - want.astype(np.float32))))
        t = lib.mod.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=0)(*args)
        us = float(np.median(t.results)) * 1e6
        print(f"| {tiles} | {err:.2e} | {us:.1f} | {us * a.layers / 1e3:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
