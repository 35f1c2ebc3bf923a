"""What the mma.sync kernels share (flash_attention_mma.py, linear_mma.py): fp16 pairs in 32-bit registers, and one
tensor-core product in mma.m16n8k16's register layout.

    lane l (g = l / 4, t = l % 4) of a warp holds, of a 16 x 8 f32 accumulator c[0:4], rows g (c0, c1) and g + 8
    (c2, c3) x columns 2t, 2t + 1; of the 16 x 16 f16 A a[0:4] (two halves a register), rows g / g + 8 x k 2t, 2t + 1
    (a0 / a1) and k + 8 (a2 / a3); of the 16 x 8 B, b0 / b1: k 2t, 2t + 1 / + 8 x column g (PTX ISA, mma.m16n8k16)
"""

from tinygpt2.tvm_shim import T


def pack(lo, hi):
    """Two fp16 in a register, the first in the low half (as __floats2half2_rn packs them)."""
    return T.Cast("uint32", T.reinterpret("uint16", lo)) | (T.Cast("uint32", T.reinterpret("uint16", hi))
                                                             << T.uint32(16))


@T.macro
def mma(c, ci, a, ai, b0, b1):
    """c[ci:ci+4] += A (a[ai:ai+4]) B (b0, b1): one mma.m16n8k16, f16 inputs, f32 accumulators."""
    T.ptx.mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32(
        c[ci], c[ci + 1], c[ci + 2], c[ci + 3], a[ai], a[ai + 1], a[ai + 2], a[ai + 3], b0, b1,
        c[ci], c[ci + 1], c[ci + 2], c[ci + 3])
