import RealModule

/// The negative logit g(c_j) and its derivative dg/dc_j for one row (docs/FORMULATION.md, "Hard
/// negatives" and "Negative logit"), evaluated in the element precision T, for one value or a
/// vector of them.
///
/// Mining: a negative is hard when c_j > f(c_y), a comparison made exactly as in Double (the
/// threshold is rounded down to T, see `LossScalar.largest(notAbove:)`), so f32 and f64 inputs
/// holding the same values mine the same classes. No gradient flows through the mining.
///
/// Mining comes first: easy negatives (the great majority in training) cost one comparison,
/// and the square root of the amm margin is taken only for vectors holding a hard negative.
/// No acos or cos is ever evaluated: cos(theta - t) = c cos t + sqrt(1 - c^2) sin t.
public struct NegativeLogit<T: LossScalar> {
    public let kind: HardKind
    /// c_j > threshold  <=>  c_j is a hard negative.
    public let threshold: T
    /// For amm: cos(t), sin(t), and the largest T below cos(t) (theta_j > t  <=>  c~_j < cos t).
    @usableFromInline let cosT: T, sinT: T, angleBound: T
    /// For mv-fixed and mv-adaptive: the slope and the offset of the linear map; for curricular,
    /// t in `slope` (g = c (t + c)).
    @usableFromInline let slope: T, offset: T
    /// The straight-through margin gradient: dg/dc = 1 for every negative.
    public let unitDerivative: Bool

    public init(kind: HardKind, hardMargin t: Double, target: TargetLogit,
                marginGradient: MarginGradient = .exact) {
        self.kind = kind
        unitDerivative = marginGradient == .straightThrough
        threshold = T.largest(notAbove: target.value)
        // theta_j <= pi, so a margin t >= pi leaves max(theta_j - t, 0) = 0 for every negative:
        // the identity below holds only where cos is monotone, so t is taken at most pi.
        let angle = Swift.min(t, Double.pi)
        cosT = T(Double.cos(angle))
        sinT = T(Double.sin(angle))
        angleBound = T.largest(below: Double.cos(angle))
        switch kind {
        case .mvFixed: slope = T(t); offset = T(t - 1)
        case .mvAdaptive: slope = T(t + 1); offset = T(t)
        case .curricular: slope = T(t); offset = 0
        case .amm, .none: slope = 1; offset = 0
        }
    }

    /// The negative logit of `parameters` (its hard kind, t and margin gradient) for a row whose
    /// target logit is `target`.
    public init(_ parameters: LossParameters, target: TargetLogit) {
        self.init(kind: parameters.hard, hardMargin: parameters.hardMargin, target: target,
                  marginGradient: parameters.marginGradient)
    }

    // MARK: One value (used at row tails and to locate errors)

    @inlinable @inline(__always)
    public func isHard(_ c: T) -> Bool { c > threshold }

    /// g(c): c itself for easy negatives, the re-weighted logit for hard ones.
    @inlinable
    public func value(_ c: T) -> T { values(T.Vector(repeating: c))[0] }

    /// dg/dc at c: 1 for easy negatives.
    @inlinable
    public func derivative(_ c: T) -> T { valuesAndDerivatives(T.Vector(repeating: c)).1[0] }

    // MARK: A vector of values

    /// g for every lane.
    // Not forced inline, here or below, so that the hard-negative arithmetic stays behind the
    // `any` branch (forced inline, LLVM if-converts it into every vector). The row kernels'
    // inner loops do not call these: they mine a whole block first and apply `minedValues`
    // (forced inline there, so that no vector crosses a call in 128-bit pieces) only to the
    // vectors that hold a hard negative (RowAccumulator).
    @inlinable
    public func values(_ c: T.Vector) -> T.Vector {
        guard kind != .none, T.vectorAny(c, greaterThan: T.Vector(repeating: threshold)) else {
            return c
        }
        return minedValues(c)
    }

    /// g and dg/dc for every lane (dg = 1 for easy negatives), sharing one square root. The
    /// values are bit for bit those of `values`.
    @inlinable
    public func valuesAndDerivatives(_ c: T.Vector) -> (value: T.Vector, derivative: T.Vector) {
        guard kind != .none, T.vectorAny(c, greaterThan: T.Vector(repeating: threshold)) else {
            return (c, T.Vector(repeating: 1))
        }
        return minedValuesAndDerivatives(c)
    }

    /// g for every lane, without the test for a hard lane: the same bits as `values`, for
    /// loops that have already found one in this vector. Branch-free but for the variant.
    @_transparent
    public func minedValues(_ c: T.Vector) -> T.Vector {
        switch kind {
        case .amm:
            return T.vectorAMMNegative(c, threshold: threshold, cosT: cosT, sinT: sinT,
                                       bound: angleBound)
        case .mvFixed, .mvAdaptive:
            let g = c * T.Vector(repeating: slope) + T.Vector(repeating: offset)
            return T.vectorSelect(c, greaterThan: T.Vector(repeating: threshold), g, c)
        case .curricular:
            let g = c * (T.Vector(repeating: slope) + c)
            return T.vectorSelect(c, greaterThan: T.Vector(repeating: threshold), g, c)
        case .none:
            return c
        }
    }

    /// g and dg/dc for every lane, without the test for a hard lane: the same bits as
    /// `valuesAndDerivatives`.
    @_transparent
    public func minedValuesAndDerivatives(_ c: T.Vector)
        -> (value: T.Vector, derivative: T.Vector)
    {
        if unitDerivative { return (minedValues(c), T.Vector(repeating: 1)) }
        switch kind {
        case .amm:
            return T.vectorAMMNegativeAndDerivative(
                c, threshold: threshold, cosT: cosT, sinT: sinT, bound: angleBound,
                ceiling: T(1 / Angles.sinFloor))
        case .mvFixed, .mvAdaptive:
            let threshold = T.Vector(repeating: self.threshold)
            let g = c * T.Vector(repeating: slope) + T.Vector(repeating: offset)
            return (T.vectorSelect(c, greaterThan: threshold, g, c),
                    T.vectorSelect(c, greaterThan: threshold, T.Vector(repeating: slope),
                                   T.Vector(repeating: 1)))
        case .curricular:
            let threshold = T.Vector(repeating: self.threshold)
            let t = T.Vector(repeating: slope)
            return (T.vectorSelect(c, greaterThan: threshold, c * (t + c), c),
                    T.vectorSelect(c, greaterThan: threshold, t + (c + c), T.Vector(repeating: 1)))
        case .none:
            return (c, T.Vector(repeating: 1))
        }
    }
}
