import AMMSoftmaxMath

/// Finding the first NaN or infinity in an array, at the speed of a read: for the inputs the
/// sharded phases must check and for outputs that may have overflowed.
public enum NonFiniteScan {
    /// Elements per step of the scan: the position is looked for only in a step that failed.
    @usableFromInline static let step = 256

    /// The index of the first NaN or infinity among `count` values, if any.
    ///
    /// x - x is 0 for every finite x and NaN otherwise, so a vector sum of such differences
    /// flags a step without a compare per element; the scalar search then runs in that step
    /// only.
    @inlinable
    public static func first<T: LossScalar>(_ values: UnsafePointer<T>, count: Int) -> Int? {
        let width = T.Vector.scalarCount
        var start = 0
        while start < count {
            let size = Swift.min(step, count - start)
            let part = values + start
            var check = T.Vector()
            var k = 0
            while k + width <= size {
                let v = UnsafeRawPointer(part + k).loadUnaligned(as: T.Vector.self)
                check += v - v
                k += width
            }
            var tail: T = 0
            while k < size { tail += part[k] - part[k]; k += 1 }
            if check.sum().isNaN || tail.isNaN {
                return start + (0..<size).first { !part[$0].isFinite }!
            }
            start += size
        }
        return nil
    }
}
