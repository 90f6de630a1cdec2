import CVectorMath
import RealModule

/// The element types the kernels compute in: Float and Double. One generic implementation
/// serves both; each supplies its SIMD vector (512 bits: 16 floats or 8 doubles) and a
/// vectorised exponential (`VectorExp.swift`).
public protocol LossScalar: Real, BinaryFloatingPoint, SIMDScalar, Codable, Sendable {
    /// The vector the row kernels process: 64 bytes, one AVX-512 register, two AVX2 or four
    /// SSE registers. Fixing the width (rather than following the instruction set) keeps the
    /// lane-wise arithmetic and the order of every sum the same on every x86-64 machine (the
    /// builds then differ only where FMA is missing; see CVectorMath).
    associatedtype Vector: SIMD where Vector.Scalar == Self

    /// e^x for every lane, with the accuracy documented in VectorExp.swift.
    static func vectorExp(_ x: Vector) -> Vector

    /// The amm negative logit g of every lane (c itself where c <= threshold), and with dg/dc:
    /// NegativeLogit's arithmetic for the amm kind, in CVectorMath (see VectorAMMNegative.swift).
    static func vectorAMMNegative(_ c: Vector, threshold: Self, cosT: Self, sinT: Self,
                                  bound: Self) -> Vector
    static func vectorAMMNegativeAndDerivative(_ c: Vector, threshold: Self, cosT: Self,
                                               sinT: Self, bound: Self, ceiling: Self)
        -> (value: Vector, derivative: Vector)

    /// For every lane: `ifTrue` where a > b, else `ifFalse`.
    static func vectorSelect(_ a: Vector, greaterThan b: Vector, _ ifTrue: Vector,
                             _ ifFalse: Vector) -> Vector

    /// Whether a > b in some lane.
    static func vectorAny(_ a: Vector, greaterThan b: Vector) -> Bool

    /// The one-pass loop over a stretch of negatives (VectorExponentiateStretch.swift);
    /// `nanCheck` is the lane-wise sum of c - c, NaN exactly where some cosine was not finite.
    static func exponentiateStretch(
        _ cosines: UnsafePointer<Self>, count: Int, scale: Self, reference: Self,
        negatives: NegativeLogit<Self>, weighted: UnsafeMutablePointer<Self>?,
        copy: StretchCopy?
    ) -> (nanCheck: Vector, maximum: Vector, sum: Double, copied: Int)
}

// Comparisons and selections live on the concrete vector types, where they compile to single
// vector instructions. Generic code over SIMDMask (the standard library's pointwiseMax, clamped,
// the mask operators) is specialised into lane-by-lane scalar loops, so the kernels use only
// these two, and build everything else (maximum, clamp) from them.

extension Float: LossScalar {
    public typealias Vector = SIMD16<Float>

    @inlinable @inline(__always)
    public static func vectorSelect(_ a: Vector, greaterThan b: Vector, _ ifTrue: Vector,
                                    _ ifFalse: Vector) -> Vector {
        ifFalse.replacing(with: ifTrue, where: a .> b)
    }

    @inlinable @inline(__always)
    public static func vectorAny(_ a: Vector, greaterThan b: Vector) -> Bool {
        amm_any_greater_f32x16(a, b) != 0
    }

    @inlinable @inline(__always)
    public static func exponentiateStretch(
        _ cosines: UnsafePointer<Float>, count: Int, scale: Float, reference: Float,
        negatives: NegativeLogit<Float>, weighted: UnsafeMutablePointer<Float>?,
        copy: StretchCopy?
    ) -> (nanCheck: Vector, maximum: Vector, sum: Double, copied: Int) {
        negatives.exponentiateStretch(cosines, count: count, scale: scale, reference: reference,
                                      weighted: weighted, copy: copy)
    }
}

extension Double: LossScalar {
    public typealias Vector = SIMD8<Double>

    @inlinable @inline(__always)
    public static func vectorSelect(_ a: Vector, greaterThan b: Vector, _ ifTrue: Vector,
                                    _ ifFalse: Vector) -> Vector {
        ifFalse.replacing(with: ifTrue, where: a .> b)
    }

    @inlinable @inline(__always)
    public static func vectorAny(_ a: Vector, greaterThan b: Vector) -> Bool {
        amm_any_greater_f64x8(a, b) != 0
    }

    @inlinable @inline(__always)
    public static func exponentiateStretch(
        _ cosines: UnsafePointer<Double>, count: Int, scale: Double, reference: Double,
        negatives: NegativeLogit<Double>, weighted: UnsafeMutablePointer<Double>?,
        copy: StretchCopy?
    ) -> (nanCheck: Vector, maximum: Vector, sum: Double, copied: Int) {
        negatives.exponentiateStretch(cosines, count: count, scale: scale, reference: reference,
                                      weighted: weighted, copy: copy)
    }
}

extension LossScalar {
    /// Orders the streaming stores made so far before any later store (sfence).
    @inlinable @inline(__always)
    public static func streamFence() { amm_store_fence() }

    /// The lane-wise larger of a and b.
    @inlinable @inline(__always)
    public static func vectorMaximum(_ a: Vector, _ b: Vector) -> Vector {
        vectorSelect(a, greaterThan: b, a, b)
    }

    /// Every lane clamped to [-1, 1].
    @inlinable @inline(__always)
    public static func vectorClampUnit(_ x: Vector) -> Vector {
        let one = Vector(repeating: 1), minusOne = Vector(repeating: -1)
        let below = vectorSelect(x, greaterThan: one, one, x)
        return vectorSelect(minusOne, greaterThan: below, minusOne, below)
    }
}

extension LossScalar {
    /// The largest value of this type strictly below `bound`, so that for every value x of this
    /// type, `x <= largest(below: bound)` exactly when `Double(x) < bound`.
    @inlinable
    public static func largest(below bound: Double) -> Self {
        var r = Self(bound)
        while Double(r) >= bound { r = r.nextDown }
        return r
    }

    /// The largest value of this type not above `bound`, so that for every value x of this type,
    /// `x > largest(notAbove: bound)` exactly when `Double(x) > bound`.
    @inlinable
    public static func largest(notAbove bound: Double) -> Self {
        var r = Self(bound)
        while Double(r) > bound { r = r.nextDown }
        return r
    }
}
