import AMMSoftmaxKernels

/// One call of `LossKernels.run`: the state its workers share, and the work of one row.
///
/// Each worker owns its slots (failure, block references, statistics, scratch rows, stream),
/// indexed by the worker number `RowParallel.forEachRow` gives it; the rows' losses are kept per
/// row and summed in row order afterwards, so the result does not depend on the thread count.
struct LossPass<T: LossScalar> {
    let parameters: LossParameters
    let cos: UnsafePointer<T>?
    let rows: Int, columns: Int
    let labels: UnsafePointer<Int64>?
    let outputs: LossKernels.Outputs<T>
    let kernels = RowKernels<T>()
    /// How many rows are not ignored: the divisor of `mean`.
    let countedRows: Int
    /// The upstream factor of every row's gradient for mean and sum (1/count for mean); for
    /// none each row reads its own upstream value.
    let rowFactor: Double
    /// Whether the gradient is made in scratch rows and copied out with streaming stores.
    let streaming: Bool
    /// Blocks per row for which the gradient pass needs the statistics pass's references.
    let blocksPerRow: Int

    /// Per row: its loss, in Double.
    private let rowLosses: UnsafeMutableBufferPointer<Double>
    /// Per worker: the first failure it met (its rows increase, so it is that worker's lowest).
    private let failures: UnsafeMutableBufferPointer<(row: Int, error: LossError)?>
    /// Per worker: room for a row's block references and its statistics.
    private let references: UnsafeMutableBufferPointer<T>
    private let statistics: UnsafeMutableBufferPointer<RowStatistics<T>>
    /// Per worker, when streaming: two scratch rows (one filling while the other is copied
    /// out), the stream copying the previous row, whether one is pending, and which scratch row
    /// is next.
    private let scratch: UnsafeMutableBufferPointer<T>
    private let streams: UnsafeMutableBufferPointer<GradientStream<T>>
    private let streamState: UnsafeMutableBufferPointer<(pending: Bool, next: Int)>
    /// Owns every buffer above.
    private let arena = ScratchArena()

    /// - Throws: `.allocation` when its scratch memory cannot be had.
    init(parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
         labels: UnsafePointer<Int64>?, outputs: LossKernels.Outputs<T>,
         streamingThreshold: Int) throws(LossError) {
        self.parameters = parameters
        self.cos = cos
        (self.rows, self.columns) = (rows, columns)
        self.labels = labels
        self.outputs = outputs
        countedRows = LossReduction.countedRows(labels, rows: rows,
                                                ignoreIndex: parameters.ignoreIndex)
        rowFactor = LossReduction.rowFactor(parameters.reduction, upstream: outputs.upstream,
                                            counted: countedRows)
        streaming = outputs.gradient != nil
            && rows * columns * MemoryLayout<T>.stride >= streamingThreshold
        blocksPerRow = outputs.gradient == nil ? 1 : RowKernel<T>.blockCount(columns: columns)

        let workers = RowParallel.workerCount(rows: rows, columns: columns,
                                              threads: parameters.numThreads)
        // Per-row scratch only where there are rows: n = 0 is valid with any c, up to Int.max.
        let rowWorkers = rows > 0 ? workers : 0
        rowLosses = try arena.buffer(Double.self, count: rows)
        failures = try arena.buffer((row: Int, error: LossError)?.self, count: workers)
        failures.initialize(repeating: nil)
        references = try arena.buffer(
            T.self, count: try ScratchArena.count(rowWorkers, times: blocksPerRow))
        statistics = try arena.buffer(RowStatistics<T>.self, count: workers)
        scratch = try arena.buffer(
            T.self, count: streaming ? try ScratchArena.count(2 * rowWorkers, times: columns) : 0)
        streams = try arena.buffer(GradientStream<T>.self, count: workers)
        streamState = try arena.buffer((pending: Bool, next: Int).self, count: workers)
        streamState.initialize(repeating: (false, 0))
    }

    func release() {
        // The failures hold errors (with strings): deinitialise them before the memory goes.
        _ = failures.deinitialize()
        arena.release()
    }

    /// Row i on `worker`: its statistics (and loss), then its gradient if one is wanted.
    /// Returns false on a failure, which stops the worker.
    func computeRow(_ i: Int, worker: Int) -> Bool {
        let label = labels![i]
        let finalRow = outputs.gradient.map { $0 + i * columns }
        guard label != parameters.ignoreIndex else {
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
        let blockReferences = gradientRow == nil
            ? nil : references.baseAddress! + worker * blocksPerRow
        let result = statistics.baseAddress! + worker
        if let error = kernels.rowStatistics(
            of: i, row, columns: columns, label: y, parameters: parameters,
            gradientRow: gradientRow, blockReferences: blockReferences,
            countsHardNegatives: outputs.hardNegatives != nil, stream: stream, into: result) {
            failures[worker] = (i, error)
            return false
        }
        rowLosses[i] = result.pointee.loss
        outputs.hardNegatives?[i] = Int64(result.pointee.hardNegatives)
        if let gradientRow, let blockReferences {
            let upstream = LossReduction.upstream(ofRow: i, parameters.reduction,
                                                  upstream: outputs.upstream,
                                                  rowFactor: rowFactor)
            kernels.gradient(columns, y, result, blockReferences, upstream, gradientRow)
            if parameters.gradientMayOverflow(T.self, upstream: upstream),
               let column = firstNonFinite(gradientRow, count: columns) {
                failures[worker] = (i, .outputOverflow("grad_cos[\(i), \(column)]", T.self))
                return false
            }
            if streaming {
                (streams.baseAddress! + worker).initialize(
                    to: GradientStream(from: gradientRow, to: finalRow!, count: columns))
                streamState[worker] = (true, 1 - streamState[worker].next)
            }
        }
        return true
    }

    /// After a worker's last row: the rest of its pending stream, and the fence that orders its
    /// streaming stores before the call returns.
    func finishWorker(_ worker: Int) {
        guard streaming else { return }
        if streamState[worker].pending { streams[worker].finish() }
        T.streamFence()
    }

    /// The failure of the lowest row, if any worker met one.
    var firstFailure: LossError? {
        failures.compactMap { $0 }.min { $0.row < $1.row }?.error
    }

    /// The reduction of the row losses into `outputs.loss`, in row order.
    ///
    /// - Throws: `.outputOverflow` when a value is beyond T's range.
    func reduceLosses() throws(LossError) {
        guard let loss = outputs.loss else { return }
        try LossReduction.write(UnsafeBufferPointer(rowLosses), count: rows,
                                reduction: parameters.reduction, counted: countedRows,
                                into: loss)
    }
}

extension RowKernels {
    /// The statistics pass of row `i` (`row`, its cosines in the element type) into `result`,
    /// with the gradient's numerators into `gradientRow` if given. Returns the row's error: a
    /// NaN or infinity at a column, or logits beyond T (a loss that is not a number although
    /// the input is finite); nil when the row is fine.
    package func rowStatistics(
        of i: Int, _ row: UnsafePointer<T>, columns: Int, label y: Int,
        parameters: LossParameters, gradientRow: UnsafeMutablePointer<T>?,
        blockReferences: UnsafeMutablePointer<T>?, countsHardNegatives: Bool,
        stream: UnsafeMutablePointer<GradientStream<T>>?,
        into result: UnsafeMutablePointer<RowStatistics<T>>
    ) -> LossError? {
        let badColumn = withUnsafePointer(to: parameters) {
            statistics(row, columns, y, $0, gradientRow, blockReferences, countsHardNegatives,
                       stream, result)
        }
        guard badColumn < 0 else {
            return .nonFiniteCosine(row: i, column: badColumn, value: Double(row[badColumn]))
        }
        guard result.pointee.loss.isFinite else {
            return .overflow(row: i, elementType: "\(T.self)",
                             largest: Double(T.greatestFiniteMagnitude))
        }
        return nil
    }
}

