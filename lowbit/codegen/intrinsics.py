"""TIR helpers the hand-written CPU kernels share: one-instruction rounding, and letting TVM vectorize it."""
from __future__ import annotations


def vector_rounding() -> None:
    """Let TVM vectorize ``nearbyint`` (round half to even, every requantization): TVM 0.27 leaves the op without
    ``TVectorizable``, so a vectorized loop that rounds is scalarized, though ``llvm.nearbyint`` takes vectors."""
    import tvm

    if not tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable"):
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def lrint(x):
    """x (f32) rounded half to even to i32 in one instruction (``vcvtps2dq``; the default rounding mode), for
    hand-written CPU kernels; the same result as ``i32(nearbyint(x))``, which LLVM emits as two."""
    from tvm import tirx

    return tirx.call_llvm_pure_intrin("int32", "llvm.lrint", x)
