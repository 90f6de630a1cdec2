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

extension LossReduction {
    /// The rows that are not ignored (the divisor of mean).
    package static func countedRows(_ labels: UnsafePointer<Int64>?, rows: Int,
                                    ignoreIndex: Int64) -> Int {
        var counted = 0
        for i in 0..<rows where labels![i] != ignoreIndex { counted += 1 }
        return counted
    }

    /// The factor of every row's gradient for mean and sum: the upstream value (1 when nil),
    /// divided by the counted rows for mean (0 when there are none); 1 for none, whose rows
    /// each read their own upstream value.
    package static func rowFactor<T: BinaryFloatingPoint>(
        _ reduction: Reduction, upstream: UnsafePointer<T>?, counted: Int
    ) -> Double {
        guard reduction != .none else { return 1 }
        let u = upstream.map { Double($0[0]) } ?? 1
        return reduction == .sum ? u : (counted > 0 ? u / Double(counted) : 0)
    }

    /// The factor of row i's gradient: `rowFactor` for mean and sum, the row's own upstream
    /// value (1 when nil) for none.
    package static func upstream<T: BinaryFloatingPoint>(
        ofRow i: Int, _ reduction: Reduction, upstream: UnsafePointer<T>?, rowFactor: Double
    ) -> Double {
        reduction == .none ? (upstream.map { Double($0[i]) } ?? 1) : rowFactor
    }
}

/// The index of the first NaN or infinity among `count` values, if any.
@inlinable
package func firstNonFinite<T: LossScalar>(_ values: UnsafePointer<T>, count: Int) -> Int? {
    NonFiniteScan.first(values, count: count)
}
