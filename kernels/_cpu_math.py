"""tanh and exp as arithmetic on float32 PrimExprs, for the CPU build.

Why: TVM 0.27's LLVM backend has no vector math library, so `T.tanh` and `T.exp` in a 16-lane vectorized
loop become 16 scalar calls to libm's `expf` each. Written as multiplies, adds, min/max, a floor and a bit
shift, the same functions vectorize like any other arithmetic. The GPU builds keep `T.tanh` / `T.exp`,
which lower to the device's own fast instructions there.

    tanh_rational(z) = z P(z^2) / Q(z^2)         z clamped to [-9, 9]         GELU (gelu.py, linear.py)
    exp_poly(x)      = 2^k * (1 + r + r^2 R(r))  x = k ln2 + r, |r| <= ln2/2  the softmax (attention.py)
"""

from tinygpt2.tvm_shim import T

# tanh_rational's coefficients: Eigen's float32 tanh (MathFunctionsImpl.h), which TVM's topi.fast_tanh uses too.
# Odd numerator, even denominator, in powers of z^2, lowest first.
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_CLAMP = 9.0                # |z| >= 9: tanh(z) rounds to +-1 in float32

# exp_poly's: Cephes' expf (also Eigen's pexp for float). ln 2 in two parts, _LN2_HI exact in 9 bits, so that
# k * _LN2_HI is exact for the k that occur and r keeps its low bits; R(r) of degree 5, lowest first.
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_R = (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3, 1.9875691500e-4)
EXP_LOW, EXP_HIGH = -87.0, 88.0  # x clamped here: 2^k stays a normal float32 (k in [-126, 127])


def _horner(coefficients, z):
    """c0 + c1 z + c2 z^2 + ... as a float32 PrimExpr, evaluated from the highest term down."""
    acc = T.float32(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * z + T.float32(c)
    return acc


def tanh_rational(z):
    """tanh(z) = z P(z^2) / Q(z^2) on a float32 PrimExpr, z clamped to [-9, 9]: within 4e-7 of tanh
    (checked in numpy over [-20, 20]; tests/test_kernels.py checks GELU built with it against gelu_ref).

    Why not T.tanh on the CPU: LLVM lowers tanh through exp, and with no vector math library it turns the
    exp of a 16-lane vector into 16 calls to libm's expf. GELU after gpt2's c_fc at 128 tokens then takes
    ~2.8 ms alone (2-core znver4 here), most of the fused linear_fc_gelu's extra time over the plain
    linear. Multiplies, adds, a min, a max and one division vectorize."""
    z = T.max(T.min(z, T.float32(TANH_CLAMP)), T.float32(-TANH_CLAMP))
    z2 = z * z
    return z * _horner(_TANH_P, z2) / _horner(_TANH_Q, z2)


def exp_poly(x):
    """exp(x) on a float32 PrimExpr, within 1e-7 relative for x in [-87, 88] (tests/test_kernels.py checks it
    against numpy's exp in float64); x clamped to that range first, so exp(-inf) gives ~1e-38, not 0.

        k = floor(x log2(e) + 1/2),  r = x - k ln2  (|r| <= ln2 / 2)
        exp(x) = 2^k exp(r),  exp(r) ~ 1 + r + r^2 R(r)
        2^k    = the float32 whose bits are (k + 127) << 23: exponent field k, mantissa 0

    Why not T.exp on the CPU: see the module's docstring. It pays only in vectorized loops: in scalar ones
    libm's expf was faster (the rule-scheduled prefill softmax, whose loops TVM leaves scalar: 15.0 -> 17.9
    ms with it, gpt2 at 512 tokens, one thread; attention.make_causal_softmax_cpu is what did pay)."""
    x = T.max(T.min(x, T.float32(EXP_HIGH)), T.float32(EXP_LOW))
    k = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - k * T.float32(_LN2_HI) - k * T.float32(_LN2_LO)
    exp_r = _horner(_EXP_R, r) * r * r + r + T.float32(1)
    two_k = T.reinterpret("float32", T.shift_left(T.Cast("int32", k) + T.int32(127), T.int32(23)))
    return exp_r * two_k
