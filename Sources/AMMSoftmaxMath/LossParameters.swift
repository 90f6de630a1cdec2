import RealModule

/// The parameters of the loss family, with the defaults of docs/FORMULATION.md.
///
/// One value of this type selects a member of the family:
/// - AMM-Softmax: `target: .arc, hard: .amm` (the default);
/// - ArcFace: `target: .arc, hard: .none`; CosFace: `target: .cos, hard: .none`;
/// - MV-Arc-Softmax: `target: .arc, hard: .mvFixed, hardMargin: 1.12...1.2`;
///   MV-AM-Softmax: `target: .cos, hard: .mvFixed`;
/// - CurricularFace: `target: .arc, hard: .curricular, hardMargin: t` (t the caller's moving
///   average, `CurricularFace.updated(t:targetCosines:)`).
public struct LossParameters: Sendable, Equatable {
    /// s: the logit scale. Finite and > 0.
    public var scale: Double
    /// m: the target margin. For `.arc`, an angle in [0, pi); for `.cos`, any finite value.
    public var margin: Double
    /// t: the hard-negative margin, finite and >= 0 (an angle for `.amm`, a weight for `.mv*`);
    /// for `.curricular`, CurricularFace's adaptive t, any finite value.
    public var hardMargin: Double
    public var target: TargetKind
    public var hard: HardKind
    public var reduction: Reduction
    /// Rows whose label equals this value are skipped (even when it lies in [0, C)).
    public var ignoreIndex: Int64
    /// Worker threads for one call; 0 means one per core. Results do not depend on it.
    public var numThreads: Int
    /// Whether the backward pass sees the margins (`.exact`) or takes every df/dc and dg/dc as 1
    /// (`.straightThrough`, insightface's CombinedMarginLoss). The forward values are the same.
    public var marginGradient: MarginGradient

    public init(
        scale: Double = 64, margin: Double = 0.5, hardMargin: Double = 0.2,
        target: TargetKind = .arc, hard: HardKind = .amm, reduction: Reduction = .mean,
        ignoreIndex: Int64 = -100, numThreads: Int = 0, marginGradient: MarginGradient = .exact
    ) {
        self.scale = scale
        self.margin = margin
        self.hardMargin = hardMargin
        self.target = target
        self.hard = hard
        self.reduction = reduction
        self.ignoreIndex = ignoreIndex
        self.numThreads = numThreads
        self.marginGradient = marginGradient
    }

    /// Checks that the scale and the hard margin are finite in the element type T, and that the
    /// scale does not round to 0 there: a Double scale beyond Float's range would make every
    /// Float logit infinite, and a weight t beyond it makes MV's t c + t - 1 NaN (inf - inf) for
    /// c < 0, a logit that would be dropped. Then no logit s g can be NaN.
    public func validateElementRange<T: LossScalar>(for _: T.Type) throws(LossError) {
        let largest = "at most \(T.greatestFiniteMagnitude)"
        // A scale that rounds to 0 would make 0 * inf = NaN of a logit g beyond T's range.
        guard T(scale).isFinite, T(scale) > 0 else {
            throw .parameter(name: "scale", value: "\(scale)", requirement: "finite and > 0 "
                             + "in \(T.self) (\(largest), at least \(T.leastNonzeroMagnitude))")
        }
        guard T(hardMargin).isFinite else {
            throw .parameter(name: "hard_margin", value: "\(hardMargin)",
                             requirement: "finite in \(T.self) (\(largest))")
        }
    }

    /// The name of `validateElementRange(for:)` before 0.3, when it checked the scale alone.
    @available(*, deprecated, renamed: "validateElementRange(for:)")
    public func validateScale<T: LossScalar>(for type: T.Type) throws(LossError) {
        try validateElementRange(for: type)
    }

    /// An upper bound on |df/dc| and |dg/dc| over every cosine (at least 1, the easy
    /// negatives'): with p_j <= 1, no gradient entry exceeds scale * |upstream| * this, so a
    /// row whose bound stays below an element type's range cannot overflow it.
    public var derivativeBound: Double {
        guard marginGradient == .exact else { return 1 }
        let floor = Angles.sinFloor
        let target = self.target == .arc
            ? Swift.abs(Double.cos(margin)) + Swift.abs(Double.sin(margin)) / floor : 1
        let hard: Double
        switch self.hard {
        case .amm: hard = Swift.abs(Double.cos(hardMargin)) + Swift.abs(Double.sin(hardMargin)) / floor
        case .mvFixed: hard = Swift.abs(hardMargin)
        case .mvAdaptive: hard = Swift.abs(hardMargin + 1)
        case .curricular: hard = Swift.abs(hardMargin) + 2
        case .none: hard = 1
        }
        return Swift.max(1, target, hard)
    }

    /// Whether a gradient row with this upstream factor may overflow T, so that it must be
    /// checked once written (only for scales near T's range; half of it covers the rounding of
    /// the products).
    public func gradientMayOverflow<T: LossScalar>(_: T.Type, upstream: Double) -> Bool {
        scale * Swift.abs(upstream) * derivativeBound >= Double(T.greatestFiniteMagnitude) / 2
    }

    /// Checks every parameter against its domain; throws naming the first one that is out of it.
    public func validate() throws(LossError) {
        guard scale.isFinite, scale > 0 else {
            throw .parameter(name: "scale", value: "\(scale)", requirement: "finite and > 0")
        }
        switch target {
        case .arc:
            guard margin.isFinite, margin >= 0, margin < Double.pi else {
                throw .parameter(name: "margin", value: "\(margin)",
                                 requirement: "in [0, pi) for target 'arc'")
            }
        case .cos:
            guard margin.isFinite else {
                throw .parameter(name: "margin", value: "\(margin)", requirement: "finite")
            }
        }
        if hard == .curricular {
            guard hardMargin.isFinite else {
                throw .parameter(name: "hard_margin", value: "\(hardMargin)",
                                 requirement: "finite (hard 'curricular')")
            }
        } else {
            guard hardMargin.isFinite, hardMargin >= 0 else {
                throw .parameter(name: "hard_margin", value: "\(hardMargin)",
                                 requirement: "finite and >= 0")
            }
        }
        guard numThreads >= 0 else {
            throw .parameter(name: "num_threads", value: "\(numThreads)", requirement: ">= 0")
        }
    }
}

/// The target logit f(c_y): which margin the target class gets.
public enum TargetKind: Int32, Sendable, CaseIterable {
    /// Additive angular margin (ArcFace): f = cos(theta_y + m), with the linear fallback
    /// f = c_y - m sin(m) where theta_y + m would pass pi.
    case arc = 0
    /// Additive cosine margin (CosFace): f = c_y - m.
    case cos = 1
}

/// The negative logit g(c_j) of a hard negative (a class closer than the penalised target).
public enum HardKind: Int32, Sendable, CaseIterable {
    /// AMM-Softmax: g = cos(max(theta_j - t, 0)), a linear angular margin on hard negatives.
    case amm = 0
    /// MV-Softmax with a fixed weight: g = t c_j + t - 1.
    case mvFixed = 1
    /// MV-Softmax with an adaptive weight: g = (t + 1) c_j + t.
    case mvAdaptive = 2
    /// No re-weighting: g = c_j.
    case none = 3
    /// CurricularFace: g = c_j (t + c_j), with t its adaptive estimate of the mean target cosine.
    case curricular = 4
}

/// What the backward pass takes for the margins' derivatives df/dc_y and dg/dc_j.
public enum MarginGradient: Int32, Sendable, CaseIterable {
    /// The derivatives of the formulation.
    case exact = 0
    /// Every df/dc and dg/dc taken as 1: dloss_i/dcos_ij = s (p_ij - [j == y_i]), the margin a
    /// constant offset as insightface's CombinedMarginLoss applies it (under no_grad).
    case straightThrough = 1
}

/// How per-row losses combine into the result.
public enum Reduction: Int32, Sendable, CaseIterable {
    /// The sum over rows that are not ignored, divided by their count (0 when there are none).
    case mean = 0
    /// The sum over all rows (ignored rows contribute 0).
    case sum = 1
    /// One loss per row (0 for ignored rows).
    case none = 2
}
