"""Dtype rules shared by every kernel.

Activations and weights are `dtype` (float32 or float16). Whatever `dtype` is, statistics and sums
(layernorm mean/variance, softmax, every matmul's accumulator) are computed in float32: float16 has
an 11-bit mantissa, and a 768-term dot product accumulated in it loses about two decimal digits.
"""

from tinygpt2.dtypes import check_dtype  # noqa: F401 (the kernels import it from here)
from tinygpt2.tvm_shim import T, tirx

ACC = "float32"                           # accumulator dtype of every reduction
F32_MIN = -3.4028234663852886e38          # exact float32 lowest value: the identity of max()


def seq_len_var(seq_len):
    """The number of new tokens `n` a kernel is built for.

    None gives a fresh symbolic int64 var (one kernel serves every prompt length: prefill); an int
    fixes it (decode uses 1). Fixed shapes matter for scheduling: DLight's GEMV rule only matches
    a matrix-vector product it can see is one, i.e. n == 1 known at compile time.
    """
    return tirx.Var("n", "int64") if seq_len is None else T.int64(seq_len)
