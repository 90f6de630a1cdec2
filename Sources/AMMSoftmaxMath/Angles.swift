import RealModule

/// The angle conventions of docs/FORMULATION.md ("Angles"): where an angle is taken from a cosine c,
/// c is first clamped to [-1, 1], and sin(theta) is floored at 1e-7 wherever it divides, so that
/// every derivative stays finite even at c = +-1. The floor is part of the definition.
public enum Angles {
    /// The floor on sin(theta) in derivatives.
    public static let sinFloor: Double = 1e-7

    /// c~ = clamp(c, -1, 1).
    @inlinable @inline(__always)
    public static func clamped<T: BinaryFloatingPoint>(_ c: T) -> T {
        Swift.min(Swift.max(c, -1), 1)
    }

    /// sin(acos(c~)) = sqrt(1 - c~^2) for a clamped c~, without the floor; written as
    /// (1 - c~)(1 + c~) so that it stays accurate as c~ approaches +-1.
    @inlinable @inline(__always)
    public static func sine<T: Real>(ofClamped c: T) -> T {
        ((1 - c) * (1 + c)).squareRoot()
    }

    /// max(sqrt(1 - c~^2), 1e-7): the sin(theta) that derivatives divide by.
    @inlinable @inline(__always)
    public static func flooredSine<T: Real & BinaryFloatingPoint>(ofClamped c: T) -> T {
        Swift.max(sine(ofClamped: c), T(sinFloor))
    }
}
