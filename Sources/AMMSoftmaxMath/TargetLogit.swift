import RealModule

/// The target logit f(c_y) and its derivative df/dc_y (docs/FORMULATION.md, "Target logit").
///
/// Computed once per row, in Double whatever the input precision, so that the mining threshold
/// that depends on it is the same for f32 and f64 inputs holding the same values.
public struct TargetLogit: Sendable {
    /// f(c_y), before the scale.
    public let value: Double
    /// df/dc_y.
    public private(set) var derivative: Double

    /// - Parameters:
    ///   - cy: the target cosine, finite (not clamped: the clamp is applied where an angle is
    ///     taken, as docs/FORMULATION.md says).
    ///   - kind: arc or cos.
    ///   - margin: m, already validated for `kind`.
    ///   - marginGradient: `.straightThrough` takes df/dc_y as 1 (the value is unchanged).
    public init(cosine cy: Double, kind: TargetKind, margin m: Double,
                marginGradient: MarginGradient = .exact) {
        self.init(exactCosine: cy, kind: kind, margin: m)
        if marginGradient == .straightThrough { derivative = 1 }
    }

    private init(exactCosine cy: Double, kind: TargetKind, margin m: Double) {
        switch kind {
        case .cos:
            value = cy - m
            derivative = 1
        case .arc:
            // theta_y + m stays below pi exactly when c_y > cos(pi - m); past that,
            // cos(theta + m) would turn back up, so the margin becomes linear (insightface's
            // fallback), keeping f monotone in c_y.
            if cy > Double.cos(Double.pi - m) {
                let c = Angles.clamped(cy)
                // cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), with the exact
                // (unfloored) sin(theta).
                value = c * Double.cos(m) - Angles.sine(ofClamped: c) * Double.sin(m)
                derivative = Double.cos(m) + Double.sin(m) * c / Angles.flooredSine(ofClamped: c)
            } else {
                value = cy - m * Double.sin(m)
                derivative = 1
            }
        }
    }

    /// The target logit of `parameters` (its target kind, margin and margin gradient).
    public init(cosine cy: Double, parameters p: LossParameters) {
        self.init(cosine: cy, kind: p.target, margin: p.margin, marginGradient: p.marginGradient)
    }
}
