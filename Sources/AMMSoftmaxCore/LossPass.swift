import AMMSoftmaxKernels

/// One call of `LossKernels.run` (or, for cosines stored in 16 bits, of `HalfPrecisionLoss.run`):
/// the state its workers share, and the work of one row.
///
/// Each worker owns its slots (failure, block references, statistics, scratch rows, stream),
/// indexed by the worker number `RowParallel.forEachRow` gives it; the rows' losses are kept per
/// row and summed in row order afterwards, so the result does not depend on the thread count.
///
/// The cosines and the gradient are stored as T (`storage` nil) or, with T = Float, in a 16-bit
/// format: the row kernels' 16-bit entries read such a row directly, and the gradient pass
/// rounds each entry as it writes it (when streaming, into a 16-bit scratch row that is then
/// streamed out, as a T gradient is from its own scratch row).
struct LossPass<T: LossScalar> {
    let parameters: LossParameters
    /// Where the matrices are (`elementBytes` per element) and, for 16-bit storage, its format.
    let cos: UnsafeRawPointer?
    let gradient: UnsafeMutableRawPointer?
    let storage: HalfStorage?
    let elementBytes: Int
    let rows: Int, columns: Int
    let labels: UnsafePointer<Int64>?
    /// The loss, upstream and per-row outputs (its `gradient` is not used: see `gradient`).
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
    /// Per worker, when streaming: two scratch rows of the stored gradient (one filling while
    /// the other is copied out), the stream copying the previous row, whether one is pending,
    /// and which scratch row is next.
    private let scratch: UnsafeMutableBufferPointer<T>
    private let scratch16: UnsafeMutableBufferPointer<UInt16>
    private let streams: UnsafeMutableBufferPointer<GradientStream>
    private let streamState: UnsafeMutableBufferPointer<(pending: Bool, next: Int)>
    /// Per worker, for 16-bit storage: a block buffer (the blocks the statistics pass widens)
    /// and, with a gradient, a Float row of weighted exponentials.
    private let blockBuffers: UnsafeMutableBufferPointer<Float>
    private let weighted: UnsafeMutableBufferPointer<T>
    /// Owns every buffer above.
    private let arena = ScratchArena()

    /// A pass over T-valued matrices (`outputs.gradient`), or, with `storage`, over 16-bit ones
    /// (`cos16`, `gradient16`; T must be Float).
    ///
    /// - Throws: `.allocation` when its scratch memory cannot be had.
    init(parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
         labels: UnsafePointer<Int64>?, outputs: LossKernels.Outputs<T>,
         storage: HalfStorage? = nil, cos16: UnsafePointer<UInt16>? = nil,
         gradient16: UnsafeMutablePointer<UInt16>? = nil,
         streamingThreshold: Int) throws(LossError) {
        precondition(storage == nil || T.self == Float.self, "16-bit storage is computed in Float")
        self.parameters = parameters
        self.storage = storage
        if storage == nil {
            (self.cos, gradient) = (cos.map(UnsafeRawPointer.init),
                                    outputs.gradient.map(UnsafeMutableRawPointer.init))
            elementBytes = MemoryLayout<T>.stride
        } else {
            (self.cos, gradient) = (cos16.map(UnsafeRawPointer.init),
                                    gradient16.map(UnsafeMutableRawPointer.init))
            elementBytes = MemoryLayout<UInt16>.stride
        }
        (self.rows, self.columns) = (rows, columns)
        self.labels = labels
        self.outputs = outputs
        countedRows = LossReduction.countedRows(labels, rows: rows,
                                                ignoreIndex: parameters.ignoreIndex)
        rowFactor = LossReduction.rowFactor(parameters.reduction, upstream: outputs.upstream,
                                            counted: countedRows)
        streaming = gradient != nil && rows * columns * elementBytes >= streamingThreshold
        blocksPerRow = gradient == nil ? 1 : RowKernel<T>.blockCount(columns: columns)

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
        let scratchCount = streaming ? try ScratchArena.count(2 * rowWorkers, times: columns) : 0
        scratch = try arena.buffer(T.self, count: storage == nil ? scratchCount : 0)
        scratch16 = try arena.buffer(UInt16.self, count: storage == nil ? 0 : scratchCount)
        streams = try arena.buffer(GradientStream.self, count: workers)
        streamState = try arena.buffer((pending: Bool, next: Int).self, count: workers)
        streamState.initialize(repeating: (false, 0))
        let half = storage != nil
        blockBuffers = try arena.buffer(Float.self, count: half
            ? try ScratchArena.count(rowWorkers, times: RowKernel<Float>.blockSize) : 0)
        weighted = try arena.buffer(T.self, count: half && gradient != nil
            ? try ScratchArena.count(rowWorkers, times: columns) : 0)
    }

    func release() {
        // The failures hold errors (with strings): deinitialise them before the memory goes.
        _ = failures.deinitialize()
        arena.release()
    }

    /// The whole call: every row over the workers, the first failure thrown, then the
    /// reduction and the per-row target cosines.
    func run() throws(LossError) {
        RowParallel.forEachRow(rows: rows, columns: columns, threads: parameters.numThreads) {
            row, worker in computeRow(row, worker: worker)
        } finish: { worker in
            finishWorker(worker)
        }
        if let error = firstFailure { throw error }
        try reduceLosses()
        writeTargetCosines()
    }

    /// Row i on `worker`: its statistics (and loss), then its gradient if one is wanted.
    /// Returns false on a failure, which stops the worker.
    private func computeRow(_ i: Int, worker: Int) -> Bool {
        let label = labels![i]
        let rowBytes = columns * elementBytes
        let finalRow = gradient.map { $0 + i * rowBytes }
        guard label != parameters.ignoreIndex else {
            rowLosses[i] = 0
            outputs.hardNegatives?[i] = 0
            if storage == nil {
                finalRow?.assumingMemoryBound(to: T.self).update(repeating: 0, count: columns)
            } else {
                finalRow?.assumingMemoryBound(to: UInt16.self).update(repeating: 0,
                                                                      count: columns)
            }
            return true
        }
        // Where the stored gradient is made: a scratch row when streaming, else its place.
        let scratchRow = (2 * worker + streamState[worker].next) * columns
        let storedRow = !streaming ? finalRow
            : storage == nil ? UnsafeMutableRawPointer(scratch.baseAddress! + scratchRow)
            : UnsafeMutableRawPointer(scratch16.baseAddress! + scratchRow)
        // Where the weighted exponentials go: the stored gradient itself for T storage.
        let weightedRow: UnsafeMutablePointer<T>? = storage == nil
            ? storedRow?.assumingMemoryBound(to: T.self)
            : gradient == nil ? nil : weighted.baseAddress! + worker * columns
        let stream = streaming && streamState[worker].pending
            ? streams.baseAddress! + worker : nil
        streamState[worker].pending = false  // the statistics pass finishes it
        let row = cos! + i * rowBytes
        let y = Int(label)
        let blockReferences = weightedRow == nil
            ? nil : references.baseAddress! + worker * blocksPerRow
        let result = statistics.baseAddress! + worker
        if let error = kernels.rowStatistics(
            of: i, row, storage: storage,
            blockBuffer: storage == nil ? nil : blockBuffers.baseAddress! + worker
                * RowKernel<Float>.blockSize,
            columns: columns, label: y, parameters: parameters, gradientRow: weightedRow,
            blockReferences: blockReferences, countsHardNegatives: outputs.hardNegatives != nil,
            stream: stream, into: result) {
            failures[worker] = (i, error)
            return false
        }
        rowLosses[i] = result.pointee.loss
        outputs.hardNegatives?[i] = Int64(result.pointee.hardNegatives)
        if let storedRow, let finalRow, let weightedRow, let blockReferences {
            let upstream = LossReduction.upstream(ofRow: i, parameters.reduction,
                                                  upstream: outputs.upstream,
                                                  rowFactor: rowFactor)
            if let storage {
                // Each entry rounded to the format as it is written; one beyond its range (or
                // beyond Float's, for huge scales) is an error, never an infinity.
                let column = kernels.halfGradient(columns, y, result, blockReferences, upstream,
                                                  weightedRow, storage.rawValue, storedRow)
                if column >= 0 {
                    failures[worker] = (i, .outputOverflow(
                        name: "grad_cos[\(i), \(column)]", elementType: storage.name,
                        largest: storage.largest))
                    return false
                }
            } else {
                kernels.gradient(columns, y, result, blockReferences, upstream, weightedRow)
                if parameters.gradientMayOverflow(T.self, upstream: upstream),
                   let column = firstNonFinite(weightedRow, count: columns) {
                    failures[worker] = (i, .outputOverflow("grad_cos[\(i), \(column)]", T.self))
                    return false
                }
            }
            if streaming {
                (streams.baseAddress! + worker).initialize(to: GradientStream(
                    from: UnsafeRawPointer(storedRow), to: finalRow, count: columns,
                    elementBytes: elementBytes))
                streamState[worker] = (true, 1 - streamState[worker].next)
            }
        }
        return true
    }

    /// After a worker's last row: the rest of its pending stream, and the fence that orders its
    /// streaming stores before the call returns.
    private func finishWorker(_ worker: Int) {
        guard streaming else { return }
        if streamState[worker].pending { streams[worker].finish() }
        T.streamFence()
    }

    /// The failure of the lowest row, if any worker met one.
    private var firstFailure: LossError? {
        failures.compactMap { $0 }.min { $0.row < $1.row }?.error
    }

    /// The reduction of the row losses into `outputs.loss`, in row order.
    ///
    /// - Throws: `.outputOverflow` when a value is beyond T's range.
    private func reduceLosses() throws(LossError) {
        guard let loss = outputs.loss else { return }
        try LossReduction.write(UnsafeBufferPointer(rowLosses), count: rows,
                                reduction: parameters.reduction, counted: countedRows,
                                into: loss)
    }

    /// The target cosine of every row (0 for an ignored row) into `outputs.targetCosines`.
    private func writeTargetCosines() {
        guard let targetCosines = outputs.targetCosines else { return }
        for i in 0..<rows {
            let label = labels![i]
            guard label != parameters.ignoreIndex else { targetCosines[i] = 0; continue }
            let at = i * columns + Int(label)
            if let storage {
                targetCosines[i] = Double(storage.widen(cos!.load(fromByteOffset: 2 * at,
                                                                  as: UInt16.self)))
            } else {
                targetCosines[i] = Double(cos!.load(fromByteOffset: at * elementBytes,
                                                    as: T.self))
            }
        }
    }
}

extension RowKernels {
    /// The statistics pass of row `i` (`row`, its cosines: T values, or 16-bit values of
    /// `storage` with a block buffer of RowKernel.blockSize Floats) into `result`, with the
    /// gradient's numerators into `gradientRow` if given. Returns the row's error: a NaN or
    /// infinity at a column, or logits beyond T (a loss that is not a number although the input
    /// is finite); nil when the row is fine.
    package func rowStatistics(
        of i: Int, _ row: UnsafeRawPointer, storage: HalfStorage? = nil,
        blockBuffer: UnsafeMutablePointer<Float>? = nil, columns: Int, label y: Int,
        parameters: LossParameters, gradientRow: UnsafeMutablePointer<T>?,
        blockReferences: UnsafeMutablePointer<T>?, countsHardNegatives: Bool,
        stream: UnsafeMutablePointer<GradientStream>?,
        into result: UnsafeMutablePointer<RowStatistics<T>>
    ) -> LossError? {
        let badColumn = withUnsafePointer(to: parameters) {
            if let storage {
                return halfStatistics(row, storage.rawValue, blockBuffer!, columns, y, $0,
                                      gradientRow, blockReferences, countsHardNegatives, stream,
                                      result)
            }
            return statistics(row, columns, y, $0, gradientRow, blockReferences,
                              countsHardNegatives, stream, result)
        }
        guard badColumn < 0 else {
            let value = storage.map {
                Double($0.widen(row.load(fromByteOffset: 2 * badColumn, as: UInt16.self)))
            } ?? Double(row.load(fromByteOffset: badColumn * MemoryLayout<T>.stride, as: T.self))
            return .nonFiniteCosine(row: i, column: badColumn, value: value)
        }
        guard result.pointee.loss.isFinite else {
            return .overflow(row: i, elementType: "\(T.self)",
                             largest: Double(T.greatestFiniteMagnitude))
        }
        return nil
    }
}
