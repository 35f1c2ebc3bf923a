"""Dtype rules shared by every kernel.

Activations and weights are `dtype` (float32 or float16). Whatever `dtype` is, statistics and sums
(layernorm mean/variance, softmax, every matmul's accumulator) are computed in float32: float16 has
an 11-bit mantissa, and a 768-term dot product accumulated in it loses about two decimal digits.
"""

SUPPORTED = ("float32", "float16")
ACC = "float32"                           # accumulator dtype of every reduction
F32_MIN = -3.4028234663852886e38          # exact float32 lowest value: the identity of max()


def check_dtype(dtype: str) -> str:
    if dtype not in SUPPORTED:
        raise ValueError(f"unsupported dtype {dtype!r}: choose one of {', '.join(SUPPORTED)}")
    return dtype
