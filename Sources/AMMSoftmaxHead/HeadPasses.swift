import AMMSoftmaxCore
import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The per-row state of one head call (`HeadKernel.run`, steps 1 and 3): the normalised
/// embeddings, each row's target logit and running log-sum-exp, and the row losses.
struct HeadCallState<T: GEMMScalar> {
    let parameters: LossParameters
    let weights: UnsafePointer<T>
    let n: Int, d: Int, c: Int
    let labels: UnsafePointer<Int64>?
    /// The global class id of the weights' first row: labels minus it are columns of this
    /// call's classes (0 unless the call holds one shard of the classes).
    let labelOffset: Int
    let hardNegatives: UnsafeMutablePointer<Int64>?
    let threads: Int
    /// Whether each row takes part (its label is not the ignore index).
    let active: [Bool]
    /// How many rows take part: the divisor of `mean`.
    let activeCount: Int
    /// x^ = normalize(x), N x D, and each row's norm.
    let xHat: UnsafeMutablePointer<T>
    let xNorms: UnsafeMutablePointer<Double>
    /// Each active row's target logit and mining threshold (nil for ignored rows).
    let targets: [TargetLogit?]
    /// Each row's target cosine c_{i,y_i} (0 for ignored rows).
    let targetCosines: [Double]
    /// Each active row's running log-sum-exp, in raw storage so that the dispatched kernels
    /// can take a pointer to one; only the active rows are initialised (a plain value type).
    let accumulators: UnsafeMutablePointer<RowAccumulator<T>>
    /// Owns the buffers above.
    private let arena: ScratchArena

    /// Where each active row's target cosine comes from.
    enum TargetSource {
        /// An indexed dot product with the row's class weights, all of which this call holds.
        case dotProducts
        /// Given: agreed over the ranks that hold one shard each (`shard.start` is the global
        /// id of the weights' first row).
        case given(UnsafePointer<Double>?, shard: ClassShard)
    }

    /// Step 1: normalises the embeddings, checks the weights, and fixes every active row's
    /// target cosine (an indexed dot product, or given), target logit and mining threshold.
    init(parameters: LossParameters, embeddings: UnsafePointer<T>?,
         weights: UnsafePointer<T>?, rows n: Int, dimension d: Int, classes c: Int,
         labels: UnsafePointer<Int64>?,
         hardNegatives: UnsafeMutablePointer<Int64>?,
         targetSource: TargetSource = .dotProducts) throws(LossError) {
        self.parameters = parameters
        // A shard may hold no class (and no weights): a pointer that is never read.
        self.weights = weights ?? UnsafePointer(bitPattern: MemoryLayout<T>.alignment)!
        (self.n, self.d, self.c) = (n, d, c)
        self.labels = labels
        if case .given(_, let shard) = targetSource {
            labelOffset = shard.start
        } else {
            labelOffset = 0
        }
        self.hardNegatives = hardNegatives
        let ignore = parameters.ignoreIndex
        let active = (0..<n).map { labels![$0] != ignore }
        self.active = active
        activeCount = active.filter { $0 }.count
        let threads = parameters.numThreads == 0 ? RowParallel.availableCores
                                                  : parameters.numThreads
        self.threads = threads
        let arena = ScratchArena()
        self.arena = arena
        let xHat = try arena.allocate(T.self, count: n * d)
        let xNorms = try arena.allocate(Double.self, count: n)
        let accumulators = try arena.allocate(RowAccumulator<T>.self, count: n)
        (self.xHat, self.xNorms, self.accumulators) = (xHat, xNorms, accumulators)
        func releaseAll() { arena.release() }

        if let bad = RowNormalization.normalize(embeddings ?? UnsafePointer(xHat), count: n,
                                                dimension: d, into: xHat, norms: xNorms,
                                                skip: { !active[$0] }) {
            releaseAll()
            throw .nonFiniteInput(name: "embeddings", row: bad.row, column: bad.column,
                                  value: bad.value)
        }
        // The weights are checked whole before any is used (the target cosines read them first).
        if c > 0, let bad = HeadKernel.firstNonFinite(weights!, count: c * d, threads: threads) {
            releaseAll()
            throw .nonFiniteInput(name: "weights", row: bad / d, column: bad % d,
                                  value: Double(weights![bad]))
        }

        let scale = T(parameters.scale)
        var targets = [TargetLogit?](repeating: nil, count: n)
        var targetCosines = [Double](repeating: 0, count: n)
        for i in 0..<n where active[i] {
            let cosine: Double
            switch targetSource {
            case .dotProducts:
                cosine = Self.targetCosine(xHat + i * d, weights! + Int(labels![i]) * d,
                                           dimension: d)
            case .given(let cosines, _):
                cosine = cosines![i]
            }
            let target = TargetLogit(cosine: cosine, parameters: parameters)
            targets[i] = target
            targetCosines[i] = cosine
            (accumulators + i).initialize(to: RowAccumulator(
                negatives: NegativeLogit<T>(parameters, target: target),
                scale: scale, countsHardNegatives: hardNegatives != nil))
        }
        self.targets = targets
        self.targetCosines = targetCosines
    }

    /// Checks the gradients a call wrote: an entry beyond T's range (possible only for huge
    /// scales or near-zero norms) is an error, never an infinity.
    func checkGradients(embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?)
        throws(LossError)
    {
        for (name, values, count) in [("grad_embeddings", embeddings, n * d),
                                      ("grad_weights", weights, c * d)] {
            guard let values, count > 0,
                  let bad = HeadKernel.firstNonFinite(values, count: count, threads: threads)
            else { continue }
            throw .outputOverflow("\(name)[\(bad / d), \(bad % d)]", T.self)
        }
    }

    func release() {
        arena.release()
    }

    /// c_y = <x^_i, W_y> / max(||W_y||, floor): a row's target cosine by an indexed dot product.
    static func targetCosine(_ xHatRow: UnsafePointer<T>, _ weightRow: UnsafePointer<T>,
                             dimension d: Int) -> Double {
        let norm = RowNormalization.norm(weightRow, dimension: d)!
        let inverse = 1 / Swift.max(norm, RowNormalization.floor)
        let product = RowNormalization.dot(xHatRow, weightRow, count: d)
        if product.isFinite { return product * inverse }
        // A row near Double's largest value: <x^, W_y> overflows although the cosine does not,
        // so the row is scaled by a power of two (exact) first, as its norm was.
        let largest = (0..<d).reduce(0.0) { Swift.max($0, Swift.abs(Double(weightRow[$1]))) }
        let scale = Double(sign: .plus, exponent: -largest.exponent, significand: 1)
        var scaled = 0.0
        for k in 0..<d { scaled += Double(xHatRow[k]) * (Double(weightRow[k]) * scale) }
        return scaled / (norm * scale)
    }

    /// The column of row i's target among this call's classes (outside [0, c) if another shard
    /// holds it).
    func targetColumn(_ i: Int) -> Int {
        Int(labels![i]) - labelOffset
    }

    /// The factor of every row's gradient: 1/count for mean (the upstream gradient is 1).
    var rowFactor: Double {
        parameters.reduction == .mean ? (activeCount > 0 ? 1 / Double(activeCount) : 0) : 1
    }

    /// Step 3, after the first pass: each row's loss and statistics (nil for ignored rows), the
    /// hard-negative counts, and the reduction written to `loss`.
    ///
    /// - Throws: `.overflow` for the lowest row whose loss overflows; `.outputOverflow` for a
    ///   reduced loss beyond T's range.
    func rowLosses(into loss: UnsafeMutablePointer<T>?) throws(LossError)
        -> [RowStatistics<T>?]
    {
        var statistics: [RowStatistics<T>?] = []
        statistics.reserveCapacity(n)
        var losses = [Double](repeating: 0, count: n)
        for i in 0..<n {
            guard active[i], let target = targets[i] else {
                hardNegatives?[i] = 0
                statistics.append(nil)
                continue
            }
            let accumulator = accumulators[i]
            hardNegatives?[i] = Int64(accumulator.hardNegatives)
            let st = RowStatistics(target: target,
                                   negatives: accumulator.negatives, scale: parameters.scale,
                                   negativeMaximum: accumulator.reference,
                                   negativeSum: accumulator.sum)
            guard st.loss.isFinite else {
                throw .overflow(row: i, elementType: "\(T.self)",
                                largest: Double(T.greatestFiniteMagnitude))
            }
            losses[i] = st.loss
            statistics.append(st)
        }
        try losses.withUnsafeBufferPointer { (losses) throws(LossError) in
            try LossReduction.write(losses, count: n, reduction: parameters.reduction,
                                    counted: activeCount, into: loss)
        }
        return statistics
    }
}

/// The blocks of classes of one head call (`HeadKernel.run`, steps 2 and 4): the block size,
/// the cosines kept from the first pass for the second, and the scratch of one block.
struct HeadBlocks<T: GEMMScalar> {
    /// Classes per block, and the number of blocks.
    let b: Int, blocks: Int
    /// How many of the first blocks keep their cosines between the passes.
    let keptBlockCount: Int
    private let keptBuffer: LargeBuffer<T>, blockBuffer: LargeBuffer<T>
    private let wHatBuffer: LargeBuffer<T>
    /// The norms of the block's weight rows.
    private let wNorms: UnsafeMutablePointer<Double>
    private let products: ChunkedGEMM<T>
    private let kernels = RowKernels<T>()
    private let arena = ScratchArena()

    /// - Throws: `.allocation` when the blocks' memory cannot be had.
    init(call: HeadCallState<T>, requestedBlockSize: Int, keepBudget: Int) throws(LossError) {
        let (n, d, c) = (call.n, call.d, call.c)
        b = HeadKernel.blockSize(T.self, rows: n, dimension: d, classes: c,
                                 requested: requestedBlockSize)
        blocks = (c + b - 1) / b
        keptBlockCount = HeadKernel.keptBlocks(T.self, rows: n, blockSize: b, blocks: blocks,
                                               budget: keepBudget)
        products = ChunkedGEMM<T>(threads: call.threads)
        let kept = try LargeBuffer<T>(capacity: keptBlockCount * n * b)
        let block: LargeBuffer<T>
        do { block = try LargeBuffer<T>(capacity: keptBlockCount < blocks ? n * b : 1) } catch {
            kept.release()
            throw error
        }
        let wHat: LargeBuffer<T>
        do { wHat = try LargeBuffer<T>(capacity: b * d) } catch {
            kept.release()
            block.release()
            throw error
        }
        (keptBuffer, blockBuffer, wHatBuffer) = (kept, block, wHat)
        do { wNorms = try arena.allocate(Double.self, count: b) } catch {
            kept.release()
            block.release()
            wHat.release()
            throw error
        }
    }

    func release() {
        keptBuffer.release()
        blockBuffer.release()
        wHatBuffer.release()
        arena.release()
    }

    /// Where block k's cosines live: kept, or the one block buffer.
    private func cosines(ofBlock k: Int, rows n: Int) -> UnsafeMutablePointer<T> {
        k < keptBlockCount ? keptBuffer.pointer + k * n * b : blockBuffer.pointer
    }

    /// W^_b for the block of `count` classes at `start`, rows spread over the workers (the
    /// weights were checked finite in step 1).
    private func normalizeBlock(_ call: HeadCallState<T>, start: Int, count: Int) {
        let (d, weights, wHat) = (call.d, call.weights, wHatBuffer.pointer)
        RowParallel.forEachRow(rows: count, columns: d, threads: call.threads) { j, _ in
            kernels.normalize(weights + (start + j) * d, 1, d, wHat + j * d, wNorms + j)
            return true
        }
    }

    /// Step 2: per block, cos_b = x^ W^_b^T, and every active row's running log-sum-exp
    /// updated with its cosines.
    func firstPass(_ call: HeadCallState<T>) {
        let (n, d, c) = (call.n, call.d, call.c)
        guard n > 0 else { return }
        for k in 0..<blocks {
            let start = k * b, count = Swift.min(b, c - start)
            normalizeBlock(call, start: start, count: count)
            let block = cosines(ofBlock: k, rows: n)
            products.cosines(xHat: call.xHat, wHat: wHatBuffer.pointer, n: n, d: d,
                             count: count, into: block)
            RowParallel.forEachRow(rows: n, columns: count, threads: call.threads) { i, _ in
                guard call.active[i] else { return true }
                withUnsafeTemporaryAllocation(of: T.self, capacity: RowKernel<T>.blockSize) {
                    kernels.accumulate(call.accumulators + i, block + i * count, count,
                                       call.targetColumn(i) - start, $0.baseAddress!)
                }
                return true
            }
        }
    }

    /// Step 4: per block, dloss/dcos_b in place of the (kept or recomputed) cosines, then
    /// dx^ += dcos_b W^_b, dW^_b = dcos_b^T x^, and dW_b through the normalisation. dx^ is
    /// left in `gradEmbeddings` for the caller's step 5.
    func secondPass(_ call: HeadCallState<T>, statistics: [RowStatistics<T>?],
                    gradEmbeddings: UnsafeMutablePointer<T>?,
                    gradWeights: UnsafeMutablePointer<T>) {
        let (n, d, c) = (call.n, call.d, call.c)
        let wHat = wHatBuffer.pointer
        let rowFactor = call.rowFactor
        gradEmbeddings?.update(repeating: 0, count: n * d)  // dx^, accumulated over blocks
        for k in 0..<blocks {
            let start = k * b, count = Swift.min(b, c - start)
            let dWHat = gradWeights + start * d
            guard n > 0 else {
                dWHat.update(repeating: 0, count: count * d)
                continue
            }
            normalizeBlock(call, start: start, count: count)
            let block = cosines(ofBlock: k, rows: n)
            if k >= keptBlockCount {
                products.cosines(xHat: call.xHat, wHat: wHat, n: n, d: d, count: count,
                                 into: block)
            }
            statistics.withUnsafeBufferPointer { rows in
                RowParallel.forEachRow(rows: n, columns: count, threads: call.threads) { i, _ in
                    let segment = block + i * count
                    guard let st = rows[i] else {
                        segment.update(repeating: 0, count: count)
                        return true
                    }
                    withUnsafePointer(to: st) {
                        kernels.segment(segment, count, call.targetColumn(i) - start, $0,
                                        rowFactor, segment)
                    }
                    return true
                }
            }
            if let gradEmbeddings {
                products.accumulateEmbeddings(dcos: block, wHat: wHat, n: n, d: d,
                                              count: count, into: gradEmbeddings)
            }
            products.weights(dcos: block, xHat: call.xHat, n: n, d: d, count: count,
                             into: dWHat)
            RowParallel.forEachRow(rows: count, columns: d, threads: call.threads) { j, _ in
                kernels.normalizeBackward(wHat + j * d, wNorms + j, 1, d, dWHat + j * d)
                return true
            }
        }
    }
}
