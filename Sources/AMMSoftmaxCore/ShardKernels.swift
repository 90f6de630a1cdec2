import AMMSoftmaxKernels

/// The loss on cosine logits sharded by class: the three phases one rank runs over its shard's
/// columns, with the caller's collectives between them (docs/FORMULATION.md, "Sharding by
/// class"; the protocol is documented in include/amm_softmax.h).
///
/// Every phase expects validated parameters, shape (`ClassShard.validate`, N >= 0) and labels
/// (against `shard.total`); `cos` is N x `shard.count`, row-major. Rows are spread over threads
/// as `LossKernels` spreads them, so the results do not depend on the thread count.
public enum ShardKernels {
    /// Phase 1: each row's target cosine if its target is in the shard, else 0 (and 0 for
    /// ignored rows): summed over ranks, every rank has every target cosine, exactly.
    public static func targets<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, shard: ClassShard,
        labels: UnsafePointer<Int64>?, into targetCosines: UnsafeMutablePointer<Double>?
    ) throws(LossError) {
        for i in 0..<rows {
            let label = labels![i]
            guard label != parameters.ignoreIndex else {
                targetCosines![i] = 0
                continue
            }
            // Every phase reports NaN or infinity in the rows that are not ignored.
            if let row = cos.map({ $0 + i * shard.count }), shard.count > 0,
               let column = firstNonFinite(row, count: shard.count) {
                throw .nonFiniteCosine(row: i, column: column, value: Double(row[column]))
            }
            guard shard.contains(label) else {
                targetCosines![i] = 0
                continue
            }
            // The column first: i * count + label can overflow where the shard ends near Int.max.
            targetCosines![i] = Double(cos![i * shard.count + (Int(label) - shard.start)])
        }
    }

    /// Phase 2: over the shard's negatives of each row that is not ignored, mined against the
    /// threshold its target cosine fixes, the largest logit (`rowMax`, -inf if none) and the
    /// sum of exp(z_j - rowMax) (`rowSum`); ignored rows give -inf and 0. With `hardNegatives`,
    /// each row's count of hard negatives in the shard.
    ///
    /// - Throws: `.nonFiniteCosine` for the lowest row (and column) holding NaN or infinity in
    ///   a row that is not ignored; `.invalidEntry` for a target cosine that is not finite;
    ///   `.overflow` for the lowest row whose logits overflow T.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func statistics<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, shard: ClassShard,
        labels: UnsafePointer<Int64>?, targetCosines: UnsafePointer<Double>?,
        rowMax: UnsafeMutablePointer<Double>?, rowSum: UnsafeMutablePointer<Double>?,
        hardNegatives: UnsafeMutablePointer<Int64>? = nil
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        try validateTargets(targetCosines, rows: rows, labels: labels,
                            ignoreIndex: parameters.ignoreIndex)
        let kernels = RowKernels<T>()
        let columns = shard.count
        let failures = FirstFailure(rows: rows, columns: columns, threads: parameters.numThreads)
        defer { failures.release() }
        RowParallel.forEachRow(rows: rows, columns: columns, threads: parameters.numThreads) {
            i, worker in
            let label = labels![i]
            guard label != parameters.ignoreIndex else {
                rowMax![i] = -.infinity
                rowSum![i] = 0
                hardNegatives?[i] = 0
                return true
            }
            var accumulator = accumulatorOf(parameters, T.self, targetCosine: targetCosines![i],
                                            countsHardNegatives: hardNegatives != nil)
            let row = cos.map { $0 + i * columns }
            if let row, columns > 0 {
                withUnsafeTemporaryAllocation(of: T.self, capacity: RowKernel<T>.blockSize) {
                    scratch in
                    withUnsafeMutablePointer(to: &accumulator) {
                        kernels.accumulate($0, row, columns, Int(label) - shard.start,
                                           scratch.baseAddress!)
                    }
                }
            }
            guard accumulator.allFinite else {
                let column = (0..<columns).first { !row![$0].isFinite }!
                failures.record(row: i, worker: worker, .nonFiniteCosine(
                    row: i, column: column, value: Double(row![column])))
                return false
            }
            // Logits beyond T's range: the row's loss could not be a number (as unsharded).
            guard accumulator.reference < .infinity, accumulator.sum.isFinite else {
                failures.record(row: i, worker: worker, .overflow(
                    row: i, elementType: "\(T.self)",
                    largest: Double(T.greatestFiniteMagnitude)))
                return false
            }
            rowMax![i] = Double(accumulator.reference)
            rowSum![i] = accumulator.sum
            hardNegatives?[i] = Int64(accumulator.hardNegatives)
            return true
        }
        if let error = failures.first { throw error }
    }

    /// Between the collectives of phase 2: each shard's sum brought to the global reference,
    /// rowSum[i] *= exp(rowMax[i] - globalMax[i]) (0 where rowMax[i] is -inf).
    public static func rescaleSums(rows: Int, rowMax: UnsafePointer<Double>?,
                                   globalMax: UnsafePointer<Double>?,
                                   rowSum: UnsafeMutablePointer<Double>?) {
        for i in 0..<rows {
            let local = rowMax![i], global = globalMax![i]
            rowSum![i] = local == -.infinity ? 0 : rowSum![i] * Double.exp(local - global)
        }
    }

    /// Phase 3: the loss of every row from the global statistics (the same on every rank),
    /// reduced, into `loss` (if given), and the gradient of the shard's columns into `gradient`
    /// (if given), times the upstream gradient (nil: 1).
    ///
    /// - Throws: `.invalidEntry` for a target cosine or a global statistic that cannot be
    ///   one; `.overflow` for the lowest row whose loss overflows T.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func gradient<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, shard: ClassShard,
        labels: UnsafePointer<Int64>?, targetCosines: UnsafePointer<Double>?,
        globalMax: UnsafePointer<Double>?, globalSum: UnsafePointer<Double>?,
        upstream: UnsafePointer<T>?, loss: UnsafeMutablePointer<T>?,
        gradient: UnsafeMutablePointer<T>?
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        try validateTargets(targetCosines, rows: rows, labels: labels,
                            ignoreIndex: parameters.ignoreIndex)
        try validateGlobalStatistics(globalMax: globalMax, globalSum: globalSum, rows: rows,
                                     labels: labels, ignoreIndex: parameters.ignoreIndex)
        let columns = shard.count
        let statistics = try globalStatistics(
            parameters, T.self, rows: rows, labels: labels, targetCosines: targetCosines,
            globalMax: globalMax, globalSum: globalSum)
        let counted = statistics.reduce(0) { $0 + ($1 == nil ? 0 : 1) }
        let reduction = parameters.reduction
        if let loss {
            try reduceLosses(statistics, reduction: reduction, counted: counted, into: loss)
        }
        guard let gradient else { return }
        let rowFactor = LossReduction.rowFactor(reduction, upstream: upstream, counted: counted)
        let kernels = RowKernels<T>()
        let failures = FirstFailure(rows: rows, columns: columns, threads: parameters.numThreads)
        defer { failures.release() }
        statistics.withUnsafeBufferPointer { statistics in
            RowParallel.forEachRow(rows: rows, columns: columns,
                                   threads: parameters.numThreads) { i, worker in
                let out = gradient + i * columns
                guard let st = statistics[i], columns > 0 else {
                    out.update(repeating: 0, count: columns)
                    return true
                }
                let factor = LossReduction.upstream(ofRow: i, reduction, upstream: upstream,
                                                    rowFactor: rowFactor)
                let row = cos! + i * columns
                // Phase 2 saw this row only if the caller ran it: NaN or infinity is an error
                // here too, never a NaN in the gradient.
                if let column = firstNonFinite(row, count: columns) {
                    failures.record(row: i, worker: worker, .nonFiniteCosine(
                        row: i, column: column, value: Double(row[column])))
                    return false
                }
                withUnsafePointer(to: st) {
                    kernels.segment(row, columns, Int(labels![i]) - shard.start, $0, factor,
                                    out)
                }
                // Always checked: p_j <= 1 holds only if the caller's global statistics are
                // those of phase 2, which this phase cannot verify.
                if let column = firstNonFinite(out, count: columns) {
                    failures.record(row: i, worker: worker,
                                    .outputOverflow("grad_cos[\(i), \(column)]", T.self))
                    return false
                }
                return true
            }
        }
        if let error = failures.first { throw error }
    }

    // MARK: - Shared by the loss and the head (AMMSoftmaxHead's ShardHeadKernel)

    /// A row's running log-sum-exp, before any negative: its target fixed by the target
    /// cosine the ranks agreed on.
    @inlinable
    package static func accumulatorOf<T: LossScalar>(
        _ parameters: LossParameters, _: T.Type, targetCosine: Double, countsHardNegatives: Bool
    ) -> RowAccumulator<T> {
        let target = TargetLogit(cosine: targetCosine, parameters: parameters)
        return RowAccumulator(
            negatives: NegativeLogit<T>(parameters, target: target),
            scale: T(parameters.scale), countsHardNegatives: countsHardNegatives)
    }

    /// Each row's statistics (nil for ignored rows) from the global largest negative logit and
    /// sum, as one process would have them.
    package static func globalStatistics<T: LossScalar>(
        _ parameters: LossParameters, _: T.Type, rows: Int, labels: UnsafePointer<Int64>?,
        targetCosines: UnsafePointer<Double>?, globalMax: UnsafePointer<Double>?,
        globalSum: UnsafePointer<Double>?
    ) throws(LossError) -> [RowStatistics<T>?] {
        var statistics: [RowStatistics<T>?] = []
        statistics.reserveCapacity(rows)
        for i in 0..<rows {
            guard labels![i] != parameters.ignoreIndex else {
                statistics.append(nil)
                continue
            }
            let target = TargetLogit(cosine: targetCosines![i], parameters: parameters)
            let negatives = NegativeLogit<T>(parameters, target: target)
            let st = RowStatistics(target: target, negatives: negatives, scale: parameters.scale,
                                   negativeMaximum: T(globalMax![i]),
                                   negativeSum: globalSum![i])
            guard st.loss.isFinite else {
                throw .overflow(row: i, elementType: "\(T.self)",
                                largest: Double(T.greatestFiniteMagnitude))
            }
            statistics.append(st)
        }
        return statistics
    }

    /// The reduction of the rows' losses (0 for ignored rows), in row order.
    package static func reduceLosses<T: LossScalar>(
        _ statistics: [RowStatistics<T>?], reduction: Reduction, counted: Int,
        into loss: UnsafeMutablePointer<T>
    ) throws(LossError) {
        let losses = statistics.map { $0?.loss ?? 0 }
        try losses.withUnsafeBufferPointer { (losses) throws(LossError) in
            try LossReduction.write(losses, count: losses.count, reduction: reduction,
                                    counted: counted, into: loss)
        }
    }

    /// The target cosines of the rows that are not ignored must be finite (they come from the
    /// caller's collective).
    package static func validateTargets(
        _ targetCosines: UnsafePointer<Double>?, rows: Int, labels: UnsafePointer<Int64>?,
        ignoreIndex: Int64
    ) throws(LossError) {
        for i in 0..<rows where labels![i] != ignoreIndex && !targetCosines![i].isFinite {
            throw .invalidEntry(name: "target_cos", index: i, value: targetCosines![i],
                                requirement: "finite (row \(i) is not ignored)")
        }
    }

    /// The global statistics of the rows that are not ignored: the largest negative logit
    /// finite or -inf (no negative at all), the sum finite and >= 0.
    package static func validateGlobalStatistics(
        globalMax: UnsafePointer<Double>?, globalSum: UnsafePointer<Double>?, rows: Int,
        labels: UnsafePointer<Int64>?, ignoreIndex: Int64
    ) throws(LossError) {
        for i in 0..<rows where labels![i] != ignoreIndex {
            let m = globalMax![i], s = globalSum![i]
            guard m.isFinite || m == -.infinity else {
                throw .invalidEntry(name: "global_max", index: i, value: m,
                                    requirement: "finite or -inf (row \(i) is not ignored)")
            }
            guard s.isFinite, s >= 0 else {
                throw .invalidEntry(name: "global_sum", index: i, value: s,
                                    requirement: "finite and >= 0 (row \(i) is not ignored)")
            }
        }
    }
}

/// The first failure of a row-parallel pass: each worker keeps its own (its rows increase, so
/// it is that worker's lowest), and the lowest row over the workers wins.
package struct FirstFailure {
    private let slots: UnsafeMutableBufferPointer<(row: Int, error: LossError)?>

    package init(rows: Int, columns: Int, threads: Int) {
        slots = .allocate(capacity: RowParallel.workerCount(rows: rows, columns: columns,
                                                            threads: threads))
        slots.initialize(repeating: nil)
    }

    package func record(row: Int, worker: Int, _ error: LossError) {
        slots[worker] = (row, error)
    }

    package var first: LossError? {
        slots.compactMap { $0 }.min { $0.row < $1.row }?.error
    }

    package func release() {
        slots.deallocate()
    }
}
