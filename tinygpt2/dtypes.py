"""The dtypes tinygpt2 runs in, and the one check of a requested dtype.

TVM-free, so that loading weights and the CLI's checks need no compiler; kernels/_dtypes.py re-exports it.
"""

from tinygpt2.errors import DTypeError

DTYPES = ("float32", "float16")


def check_dtype(dtype: str) -> str:
    """`dtype` if tinygpt2 runs in it, else DTypeError naming the ones it does."""
    if dtype not in DTYPES:
        raise DTypeError(f"unsupported dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    return dtype
