import AMMSoftmaxKernels

/// The reduction of per-row losses (Double) into the caller's loss of element type T, shared by
/// every path, so that a value the element type cannot hold is the same error everywhere.
package enum LossReduction {
    /// `reduction` of the first `count` row losses (0 for ignored rows) into `loss`: one value
    /// for mean (over `counted` rows; 0 when there are none) and sum, `count` for none. Sums
    /// in row order, so the result does not depend on how rows were spread over threads.
    ///
    /// - Throws: `.outputOverflow` naming the first value beyond T's range.
    package static func write<T: LossScalar>(
        _ rowLosses: UnsafeBufferPointer<Double>, count: Int, reduction: Reduction,
        counted: Int, into loss: UnsafeMutablePointer<T>?
    ) throws(LossError) {
        // Only n = 0 with reduction none may pass no loss (zero values to write).
        guard let loss else { return }
        switch reduction {
        case .none:
            for i in 0..<count {
                loss[i] = T(rowLosses[i])
                guard loss[i].isFinite else { throw .outputOverflow("loss[\(i)]", T.self) }
            }
        case .sum, .mean:
            var total = 0.0
            for i in 0..<count { total += rowLosses[i] }
            loss[0] = T(reduction == .mean ? (counted > 0 ? total / Double(counted) : 0) : total)
            guard loss[0].isFinite else {
                throw .outputOverflow("loss (the \(reduction) over rows)", T.self)
            }
        }
    }
}

/// The index of the first NaN or infinity among `count` values, if any.
@inlinable
package func firstNonFinite<T: LossScalar>(_ values: UnsafePointer<T>, count: Int) -> Int? {
    NonFiniteScan.first(values, count: count)
}
