import RealModule

/// The element types the kernels compute in: Float and Double. One generic implementation
/// serves both; the entry points are specialised for each.
public protocol LossScalar: Real, BinaryFloatingPoint, Sendable {}

extension Float: LossScalar {}
extension Double: LossScalar {}

extension LossScalar {
    /// The largest value of this type strictly below `bound`, so that for every value x of this
    /// type, `x <= largest(below: bound)` exactly when `Double(x) < bound`.
    @inlinable
    static func largest(below bound: Double) -> Self {
        var r = Self(bound)
        while Double(r) >= bound { r = r.nextDown }
        return r
    }

    /// The largest value of this type not above `bound`, so that for every value x of this type,
    /// `x > largest(notAbove: bound)` exactly when `Double(x) > bound`.
    @inlinable
    static func largest(notAbove bound: Double) -> Self {
        var r = Self(bound)
        while Double(r) > bound { r = r.nextDown }
        return r
    }
}
