import RealModule

/// The negative logit g(c_j) and its derivative dg/dc_j for one row (FORMULATION.md, "Hard
/// negatives" and "Negative logit"), evaluated in the element precision T.
///
/// Mining: a negative is hard when c_j > f(c_y), a comparison made exactly as in Double (the
/// threshold is rounded down to T, see `LossScalar.largest(notAbove:)`), so f32 and f64 inputs
/// holding the same values mine the same classes. No gradient flows through the mining.
@usableFromInline
struct NegativeLogit<T: LossScalar> {
    @usableFromInline let kind: HardKind
    /// c_j > threshold  <=>  c_j is a hard negative.
    @usableFromInline let threshold: T
    /// For amm: cos(t), sin(t), and the largest T below cos(t) (theta_j > t  <=>  c~_j < cos t).
    @usableFromInline let cosT: T, sinT: T, angleBound: T
    /// For mv-fixed and mv-adaptive: the slope and the offset of the linear map.
    @usableFromInline let slope: T, offset: T

    init(kind: HardKind, hardMargin t: Double, target: TargetLogit) {
        self.kind = kind
        threshold = T.largest(notAbove: target.value)
        cosT = T(Double.cos(t))
        sinT = T(Double.sin(t))
        angleBound = T.largest(below: Double.cos(t))
        switch kind {
        case .mvFixed: slope = T(t); offset = T(t - 1)
        case .mvAdaptive: slope = T(t + 1); offset = T(t)
        case .amm, .none: slope = 1; offset = 0
        }
    }

    @inlinable @inline(__always)
    func isHard(_ c: T) -> Bool { c > threshold }

    /// g(c): c itself for easy negatives, the re-weighted logit for hard ones.
    @inlinable @inline(__always)
    func value(_ c: T) -> T {
        guard isHard(c) else { return c }
        switch kind {
        case .amm:
            let x = Angles.clamped(c)
            // cos(theta - t) = cos(theta) cos(t) + sin(theta) sin(t) while theta > t; cos(0) = 1
            // once theta <= t (the margin never pushes a negative past the class centre).
            guard x <= angleBound else { return 1 }
            return x * cosT + Angles.sine(ofClamped: x) * sinT
        case .mvFixed, .mvAdaptive:
            return slope * c + offset
        case .none:
            return c
        }
    }

    /// dg/dc at c: 1 for easy negatives.
    @inlinable @inline(__always)
    func derivative(_ c: T) -> T {
        guard isHard(c) else { return 1 }
        switch kind {
        case .amm:
            let x = Angles.clamped(c)
            guard x <= angleBound else { return 0 }
            return cosT - sinT * x / Angles.flooredSine(ofClamped: x)
        case .mvFixed, .mvAdaptive:
            return slope
        case .none:
            return 1
        }
    }
}
