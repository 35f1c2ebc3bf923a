"""On the GPU machine: prefill's linears alone, per tensor-core schedule (tinygpt2/tensor_core.py), or in
float32 per CUDA-core tile of DLight's Matmul (rules.TiledMatmul).

    python3 scripts/bench_matmul.py [--model gpt2-xl] [--n 1024] [--variants dlight,w8-64x32,mma-128x128-w2x4-k32-s4,...]
    python3 scripts/bench_matmul.py --dtype float32 [--n 128] [--variants simt-dlight,...]

For gpt2-xl's four linears at n tokens (each with its epilogue: bias, GELU, residual), each schedule (or each
tile of kernels/linear_mma.py's and kernels/linear_wgmma.py's hand-written kernels):
a check against numpy (max abs error, fp16) and the median time of one call over 5 repeats of 20
(TVM's time_evaluator, after a warm-up), in us and TFLOP/s; beside them torch's F.linear (cuBLAS),
timed with CUDA events, when torch is there (TF32 off: the same float32 math as ours). Markdown on stdout.
"""

import argparse
import sys

import numpy as np

from tinygpt2 import kernels as K
from tinygpt2.compile import tir_pass_context
from tinygpt2.config import PRESETS
from tinygpt2.rules import TiledMatmul
from tinygpt2.targets import make_target
from tinygpt2.tensor_core import PipelinedTensorCoreMatmul, TensorCoreMatmul
from tinygpt2.tvm_shim import tvm

# name -> rule: warps x (the C tile each warp owns), then the block's tile if not 128 x 128; w8-64x32 is
# the rule entry tensor-core-matmul-async (its default)
VARIANTS = {
    "dlight": lambda: TensorCoreMatmul(),
    "w16-32x32": lambda: PipelinedTensorCoreMatmul(warps=(4, 4)),                  # DLight's tile and warps
    "w8-64x32": lambda: PipelinedTensorCoreMatmul(),                               # 128 x 128, 8 warps
    "w8-32x64": lambda: PipelinedTensorCoreMatmul(warps=(4, 2)),
    "w4-64x64": lambda: PipelinedTensorCoreMatmul(warps=(2, 2)),
    "w8-64x64-128x256": lambda: PipelinedTensorCoreMatmul(tile=(128, 256), warps=(2, 4)),
    "w8-64x64-256x128": lambda: PipelinedTensorCoreMatmul(tile=(256, 128), warps=(4, 2)),
    "w2-64x64-128x64": lambda: PipelinedTensorCoreMatmul(tile=(128, 64), warps=(2, 1)),
    "w4-64x32-128x64": lambda: PipelinedTensorCoreMatmul(tile=(128, 64), warps=(2, 2)),
}
# linear.py's kernels -> the epilogue the hand-written ones (below) take for them
EPILOGUE_OF = {K.make_linear: "bias", K.make_linear_gelu: "gelu", K.make_linear_residual: "residual"}
# kernels/linear_mma.py (mma.sync, written already scheduled): mma-BMxBN-wWMxWN-kBK-sS is make_linear_mma with
# a BM x BN tile, WM x WN warps, K-steps of BK, S of them in shared memory (and -bB: registers left for B blocks
# an SM, 2 unless said)
MMA_DEFAULT = ["mma-128x128-w2x4-k32-s4", "mma-128x128-w2x4-k64-s3", "mma-128x128-w2x4-k32-s3",
               "mma-128x256-w2x4-k32-s3", "mma-256x128-w4x2-k32-s3", "mma-128x128-w2x2-k32-s4",
               "mma-128x64-w2x2-k32-s4"]


def mma_kernel(name: str, make, k_in: int, n_out: int):
    """The variant's make_linear_mma for the linear that `make` (linear.py's) builds."""
    tile, warps, k, s, *more = name.split("-")[1:]
    epilogue = EPILOGUE_OF[make]
    opts = {"min_blocks": int(more[0][1:])} if more else {}
    return K.make_linear_mma(k_in, n_out, epilogue, tile=tuple(int(v) for v in tile.split("x")),
                             warps=tuple(int(v) for v in warps[1:].split("x")), k_step=int(k[1:]), stages=int(s[1:]),
                             **opts)


# kernels/linear_wgmma.py (Hopper's wgmma, written already scheduled): wg-BN-gWG-sS is make_linear_wgmma with tiles
# of 64 WG rows x BN columns and S stages of 64 of K; wg-auto the model's tile for each linear (linear_wgmma.tile_for)
WGMMA_DEFAULT = ["wg-auto", "wg-128-g2-s4", "wg-256-g2-s4", "wg-192-g2-s4", "wg-160-g2-s4", "wg-64-g2-s4",
                 "wg-128-g1-s6", "wg-160-g1-s5", "wg-256-g1-s4"]


def wgmma_kernel(name: str, make, k_in: int, n_out: int):
    """The variant's make_linear_wgmma for the linear that `make` (linear.py's) builds."""
    epilogue = EPILOGUE_OF[make]
    if name == "wg-auto":
        return K.make_linear_wgmma(k_in, n_out, epilogue, **K.linear_wgmma.tile_for(n_out))
    bn, wg, s = name.split("-")[1:]
    return K.make_linear_wgmma(k_in, n_out, epilogue, tile_n=int(bn), warpgroups=int(wg[1:]), stages=int(s[1:]))


# float32, on CUDA cores: simt-BXxBY-MXxMY[-kK][-vtAxB][-vV][-km][-uU][-p] is rules.TiledMatmul with BX x BY threads
# (C's rows x columns), each computing MX x MY outputs (A x B of them, strided, with virtual threads), K-steps of
# K (16), V-wide loads into shared memory (4), the tiles in shared memory K-major with -km (rules.to_k_major;
# DLight's layout without), an unroll limit of U (256; a thread's K-step is unrolled when MX x MY x K fits),
# the next K-step loaded into registers during this one with -p (rules.prefetch_to_registers);
# simt-dlight is DLight's own config (8 x 16 threads of 4 x 4: a 32 x 64 tile)
SIMT_DEFAULT = ["simt-dlight", "simt-16x16-4x8-v2", "simt-16x8-4x8-v4-km", "simt-16x8-4x8-k32-v4-km-p",
                "simt-16x16-4x8-k32-v4-km-p", "simt-8x16-4x4-k32-v4-km-p"]
# simt-16x8-4x8-k32-v4-km-p is the rule entry tiled-matmul's tile (its default); simt-16x8-4x8-v4-km its tile
# before the prefetch, simt-16x16-4x8-v2 before K-major (2026-12-04)


def simt_rule(name: str) -> TiledMatmul:
    if name == "simt-dlight":
        return TiledMatmul(block=(8, 16), micro=(4, 4), k=16, vector=2, min_out=0, k_major=False, prefetch=False)
    parts = name.split("-")[1:]
    block, micro = (tuple(int(v) for v in p.split("x")) for p in parts[:2])
    opts = {"k": 16, "vthread": (1, 1), "vector": 4, "min_out": 0,         # every linear, however narrow
            "k_major": False, "prefetch": False}
    for p in parts[2:]:
        if p == "km":
            opts["k_major"] = True
        elif p == "p":
            opts["prefetch"] = True
        elif p.startswith("k"):
            opts["k"] = int(p[1:])
        elif p.startswith("vt"):
            opts["vthread"] = tuple(int(v) for v in p[2:].split("x"))
        elif p.startswith("v"):
            opts["vector"] = int(p[1:])
        elif p.startswith("u"):
            opts["unroll"] = int(p[1:])
    return TiledMatmul(block=block, micro=micro, **opts)


def linears(cfg):
    C, F = cfg.n_embd, 4 * cfg.n_embd
    return {"qkv": (K.make_linear, C, 3 * C, False), "attn_proj": (K.make_linear_residual, C, C, True),
            "fc_gelu": (K.make_linear_gelu, C, F, False), "mlp_proj": (K.make_linear_residual, F, C, True)}


def refs(name, x, w, b, r):
    if name == "fc_gelu":
        return K.linear_gelu_ref(x, w, b)
    return K.linear_residual_ref(x, w, b, r) if r is not None else K.linear_ref(x, w, b)


def cublas_us(x, w, b, r, gelu):
    try:
        import torch

        from bench_weight_stream import events_us
    except ImportError:
        return None
    torch.backends.cuda.matmul.allow_tf32 = False            # float32 as float32 (torch's default; said here)
    X, W, B = (torch.from_numpy(a).cuda() for a in (x, w, b))
    R = torch.from_numpy(r).cuda() if r is not None else None

    def f():
        y = torch.nn.functional.linear(X, W, B)
        y = torch.nn.functional.gelu(y, approximate="tanh") if gelu else y
        return y + R if R is not None else y
    return float(events_us(f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-xl")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--variants", default=None)
    a = ap.parse_args()
    a.variants = a.variants or ",".join([*VARIANTS, *MMA_DEFAULT, *WGMMA_DEFAULT] if a.dtype == "float16" else SIMT_DEFAULT)
    cfg = PRESETS[a.model]
    dev = tvm.cuda(0)
    target = make_target("cuda", "sm_90a")
    rng = np.random.default_rng(0)
    names = a.variants.split(",")
    print(f"{a.model}, n = {a.n}, {a.dtype}: us a call (TFLOP/s), max abs error against numpy\n")
    print("| linear | " + " | ".join(names) + " | cuBLAS (torch) |\n|---|" + "---|" * (len(names) + 1))
    total = dict.fromkeys(names + ["cublas"], 0.0)
    for lin, (make, k_in, n_out, residual) in linears(cfg).items():
        x = rng.standard_normal((a.n, k_in)).astype(a.dtype)
        w = (rng.standard_normal((n_out, k_in)) / np.sqrt(k_in)).astype(a.dtype)
        b = rng.standard_normal(n_out).astype(a.dtype)
        r = rng.standard_normal((a.n, n_out)).astype(a.dtype) if residual else None
        want = refs(lin, x, w, b, r).astype(np.float32)
        flop = 2.0 * a.n * k_in * n_out
        cells = []
        for name in names:
            try:
                if name.startswith("mma-"):
                    func = mma_kernel(name, make, k_in, n_out)
                elif name.startswith("wg-"):
                    func = wgmma_kernel(name, make, k_in, n_out)
                else:
                    rule = VARIANTS[name]() if a.dtype == "float16" else simt_rule(name)
                    func = rule.apply(make(k_in, n_out, a.dtype), target, False).mod["main"]
                with tir_pass_context(target):               # cp.async for the copies marked async
                    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
                args = [tvm.runtime.tensor(v, dev) for v in (x, w, b) + ((r,) if residual else ())]
                args.append(tvm.runtime.tensor(np.zeros((a.n, n_out), a.dtype), dev))
                lib["main"](*args)
                err = float(np.max(np.abs(args[-1].numpy().astype(np.float32) - want)))
                t = lib.mod.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=0)(*args)
                us = float(np.median(t.results)) * 1e6
                total[name] += us
                cells.append(f"{us:.1f} ({flop / us / 1e6:.0f}) err {err:.1e}")
            except Exception as e:                                       # a variant that does not build/run
                cells.append(f"failed: {str(e).strip().splitlines()[-1][:60]}")
        cu = cublas_us(x, w, b, r, lin == "fc_gelu")
        if cu is not None:
            total["cublas"] += cu
        cells.append(f"{cu:.1f} ({flop / cu / 1e6:.0f})" if cu else "-")
        print(f"| {lin} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    print(f"| x {cfg.n_layer} layers, ms | " + " | ".join(f"{total[k] * cfg.n_layer / 1e3:.2f}" for k in names + ["cublas"]) + " |")


if __name__ == "__main__":
    main()
