import AMMSoftmaxKernels

/// The loss kernels over a whole N x C matrix: forward, backward and both at once.
///
/// These are the entry points the C ABI and the Swift API call. They expect validated
/// parameters, shape and labels (`LossParameters.validate`, `validateShape`, `validateLabels`)
/// and check the one thing only a full read can: that every row that is not ignored is finite.
public enum LossKernels {
    /// What to compute and where to put it.
    public struct Outputs<T: LossScalar> {
        /// 1 value (mean, sum) or N values (none); nil to skip the loss.
        public var loss: UnsafeMutablePointer<T>?
        /// N x C; nil to skip the gradient.
        public var gradient: UnsafeMutablePointer<T>?
        /// The upstream gradient: 1 value (mean, sum) or N values (none); nil means 1.
        public var upstream: UnsafePointer<T>?
        /// N counts of the negatives mined as hard in each row (0 for ignored rows); nil to
        /// skip counting.
        public var hardNegatives: UnsafeMutablePointer<Int64>?

        public init(loss: UnsafeMutablePointer<T>? = nil, gradient: UnsafeMutablePointer<T>? = nil,
                    upstream: UnsafePointer<T>? = nil,
                    hardNegatives: UnsafeMutablePointer<Int64>? = nil) {
            self.loss = loss
            self.gradient = gradient
            self.upstream = upstream
            self.hardNegatives = hardNegatives
        }
    }

    /// The gradient size (bytes) from which it is written with streaming stores
    /// (`GradientStream`): the last-level cache of the machine this was tuned on (32 MiB). A
    /// smaller gradient is written through the cache, where the caller will read it next.
    /// Measured on amm f32 512 x 100,000 (205 MB), 2 threads: forward_backward 10.0 -> 8.6 ms;
    /// on 1 thread it costs 3% (16.1 -> 16.6 ms), where memory is not what limits.
    public static let streamingThreshold = 32 << 20

    /// Computes the loss and/or the gradient of `cos` (rows x columns, row-major).
    ///
    /// - Precondition: parameters, shape and labels are valid; pointers are valid for the sizes
    ///   above (they may be nil only when the matching size is 0); `upstream` is finite.
    /// - Throws: `LossError.parameter` if the scale is not finite in T;
    ///   `LossError.nonFiniteCosine` for the lowest row (and in it the lowest column) that
    ///   holds NaN or infinity and is not ignored; `LossError.overflow` for the lowest row
    ///   whose logits overflow T. The outputs are then unspecified.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func run<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
        labels: UnsafePointer<Int64>?, outputs: Outputs<T>
    ) throws(LossError) {
        try run(parameters: parameters, cos: cos, rows: rows, columns: columns, labels: labels,
                outputs: outputs, streamingThreshold: streamingThreshold)
    }

    /// `run` with the gradient size from which it is streamed given (tests force either way).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    package static func run<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
        labels: UnsafePointer<Int64>?, outputs: Outputs<T>, streamingThreshold: Int
    ) throws(LossError) {
        try parameters.validateScale(for: T.self)
        let reduction = parameters.reduction
        let ignore = parameters.ignoreIndex
        var counted = 0
        for i in 0..<rows where labels![i] != ignore { counted += 1 }

        // The upstream factor of every row's gradient for mean and sum (1/count for mean);
        // for none each row reads its own upstream value.
        let rowFactor: Double
        switch reduction {
        case .mean, .sum:
            let upstream = outputs.upstream.map { Double($0[0]) } ?? 1
            rowFactor = reduction == .sum ? upstream
                : (counted > 0 ? upstream / Double(counted) : 0)
        case .none:
            rowFactor = 1
        }

        let kernels = RowKernels<T>()
        let workers = RowParallel.workerCount(rows: rows, columns: columns,
                                                  threads: parameters.numThreads)
        // Per-row losses in Double, summed in row order afterwards (thread-count independent).
        let rowLosses = UnsafeMutableBufferPointer<Double>.allocate(capacity: Swift.max(rows, 1))
        defer { rowLosses.deallocate() }
        // The first failure each worker met (its rows increase, so it is that worker's lowest).
        let failures = UnsafeMutableBufferPointer<(row: Int, error: LossError)?>
            .allocate(capacity: workers)
        failures.initialize(repeating: nil)
        defer { failures.deallocate() }

        // A row whose loss is not a number although its input is finite: its logits overflowed.
        func overflowed(_ st: RowStatistics<T>, row: Int, worker: Int) -> Bool {
            if st.loss.isFinite { return false }
            failures[worker] = (row, .overflow(row: row, elementType: "\(T.self)",
                                               largest: Double(T.greatestFiniteMagnitude)))
            return true
        }

        // A large gradient is written with streaming stores: each row's gradient is made in one
        // of two scratch rows of its worker, then copied out while the worker's next row runs
        // (GradientStream). Per worker: the two scratch rows, which one is next, and the row
        // being copied out, if any.
        let streaming = outputs.gradient != nil
            && rows * columns * MemoryLayout<T>.stride >= streamingThreshold
        let scratch = UnsafeMutableBufferPointer<T>.allocate(
            capacity: streaming ? 2 * workers * columns : 0)
        defer { scratch.deallocate() }
        let streams = UnsafeMutableBufferPointer<GradientStream<T>>.allocate(capacity: workers)
        defer { streams.deallocate() }
        let streamState = UnsafeMutableBufferPointer<(pending: Bool, next: Int)>
            .allocate(capacity: workers)
        streamState.initialize(repeating: (false, 0))
        defer { streamState.deallocate() }

        RowParallel.forEachRow(rows: rows, columns: columns, threads: parameters.numThreads) { i, worker in
            let label = labels![i]
            let finalRow = outputs.gradient.map { $0 + i * columns }
            guard label != ignore else {
                rowLosses[i] = 0
                outputs.hardNegatives?[i] = 0
                finalRow?.update(repeating: 0, count: columns)
                return true
            }
            let gradientRow = streaming
                ? scratch.baseAddress! + (2 * worker + streamState[worker].next) * columns
                : finalRow
            let stream = streaming && streamState[worker].pending
                ? streams.baseAddress! + worker : nil
            streamState[worker].pending = false  // the statistics pass finishes it
            let row = cos! + i * columns
            let y = Int(label)
            let blocks = gradientRow == nil ? 1 : RowKernel<T>.blockCount(columns: columns)
            return withUnsafeTemporaryAllocation(of: T.self, capacity: blocks) { references in
                withUnsafeTemporaryAllocation(of: RowStatistics<T>.self, capacity: 1) { slot in
                    let references = gradientRow == nil ? nil : references.baseAddress
                    let statistics = slot.baseAddress!
                    let badColumn = withUnsafePointer(to: parameters) {
                        kernels.statistics(row, columns, y, $0, gradientRow, references,
                                           outputs.hardNegatives != nil, stream, statistics)
                    }
                    guard badColumn < 0 else {
                        failures[worker] = (i, .nonFiniteCosine(
                            row: i, column: badColumn, value: Double(row[badColumn])))
                        return false
                    }
                    rowLosses[i] = statistics.pointee.loss
                    outputs.hardNegatives?[i] = Int64(statistics.pointee.hardNegatives)
                    if overflowed(statistics.pointee, row: i, worker: worker) { return false }
                    if let gradientRow, let references {
                        let upstream = reduction == .none
                            ? (outputs.upstream.map { Double($0[i]) } ?? 1) : rowFactor
                        kernels.gradient(columns, y, statistics, references, upstream,
                                         gradientRow)
                        if streaming {
                            (streams.baseAddress! + worker).initialize(
                                to: GradientStream(from: gradientRow, to: finalRow!,
                                                   count: columns))
                            streamState[worker] = (true, 1 - streamState[worker].next)
                        }
                    }
                    return true
                }
            }
        } finish: { worker in
            guard streaming else { return }
            if streamState[worker].pending { streams[worker].finish() }
            T.streamFence()
        }

        if let first = failures.compactMap({ $0 }).min(by: { $0.row < $1.row }) {
            throw first.error
        }
        guard let loss = outputs.loss else { return }
        switch reduction {
        case .none:
            for i in 0..<rows { loss[i] = T(rowLosses[i]) }
        case .sum, .mean:
            var total = 0.0
            for i in 0..<rows { total += rowLosses[i] }
            loss[0] = T(reduction == .mean ? (counted > 0 ? total / Double(counted) : 0) : total)
        }
    }
}
