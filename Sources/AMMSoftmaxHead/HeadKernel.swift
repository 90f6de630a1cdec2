import AMMSoftmaxCore
import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The fused head: embeddings x (N x D) and class weights W (C x D) in; the loss on
/// cos = normalize(x) normalize(W)^T, and its gradients with respect to x and W, out
/// (docs/FORMULATION.md, "Head") -- without ever holding the N x C matrix.
///
/// The classes are processed in blocks of B (`blockSize`), as Cut Cross-Entropy does:
/// 1. x^ = normalize(x) (N x D), and each row's target cosine c_y = <x^_i, W^_y> by an indexed
///    dot product, which fixes the row's target logit and its mining threshold up front.
/// 2. First pass, per block: W^_b = normalize(W_b), cos_b = x^ W^_b^T (sgemm/dgemm), and every
///    row's running log-sum-exp updated with its B cosines (RowAccumulator).
/// 3. The row losses and statistics, and the reduction.
/// 4. Second pass, per block: W^_b again, and cos_b -- kept from the first pass for the first
///    blocks, as many as `keepBudget` holds, recomputed for the others -- turned in place into
///    dloss/dcos_b; then dx^ += dcos_b W^_b and dW^_b = dcos_b^T x^ (two more products), and
///    dW_b through the normalisation.
/// 5. dx through the normalisation.
/// Three products of N x D x C multiply-adds, the three the gradient needs, plus the
/// recomputed cosines of the blocks not kept: none while N C elements fit in `keepBudget`
/// (N = 256, C = 98,000 in f32), about a fraction 1 - 96 MiB / (N C element size) beyond. Kept
/// or recomputed, a block's cosines come from the same product calls, so the results do not
/// depend on how many blocks are kept. Why keep them: the fourth product was a quarter of the
/// time; the budget trades memory for it, and stays a fixed bound whatever C is.
///
/// Extra memory: x^ (N x D); the kept cosines (at most `keepBudget` bytes); one block's
/// cosines (N x B, only if some block is not kept) and normalised weights (B x D); and O(N)
/// per-row state. B is chosen so that the block takes at most `blockBudget` bytes:
/// B = min(C, 8192, max(16, blockBudget / ((N + D) * element size)), a multiple of 16), unless
/// given. So the extra memory is at most 96 MiB + 8 MiB + N D elements + O(N) for the
/// automatic block, whatever C is.
public enum HeadKernel {
    /// Bytes a block of cosines and normalised weights may take (automatic block size).
    public static let blockBudget = 8 << 20

    /// Bytes of first-pass cosines kept for the second pass, in whole blocks.
    public static let keepBudget = 96 << 20

    /// How many of the `blocks` blocks of B classes (the first ones) keep their cosines.
    public static func keptBlocks<T>(_: T.Type, rows n: Int, blockSize b: Int, blocks: Int,
                                     budget: Int = keepBudget) -> Int {
        let perBlock = Swift.max(n * b * MemoryLayout<T>.stride, 1)
        return Swift.min(blocks, budget / perBlock)
    }

    /// The block size for a problem: `requested` if positive (at most C), else the rule above.
    public static func blockSize<T>(_: T.Type, rows n: Int, dimension d: Int, classes c: Int,
                                    requested: Int) -> Int {
        if requested > 0 { return Swift.min(requested, c) }
        let perClass = (n + d) * MemoryLayout<T>.stride
        let fitting = Swift.max(16, blockBudget / Swift.max(perClass, 1) / 16 * 16)
        return Swift.max(1, Swift.min(c, 8192, fitting))
    }

    /// Computes the loss and both gradients (and, if `hardNegatives` is given, each row's
    /// number of negatives mined as hard; 0 for ignored rows).
    ///
    /// - Precondition: parameters, shape (N >= 0, D >= 1, C >= 1, every product representable
    ///   and every dimension within 32-bit BLAS indices) and labels are valid; pointers are
    ///   valid for their sizes (nil only for zero elements).
    /// - Throws: `.parameter` for a scale not finite in T; `.nonFiniteInput` for the first NaN
    ///   or infinity in the embeddings of a row that is not ignored, then in the weights;
    ///   `.overflow` for the lowest row whose logits overflow T.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func run<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int,
        embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?,
        rows n: Int, dimension d: Int, classes c: Int, labels: UnsafePointer<Int64>?,
        loss: UnsafeMutablePointer<T>?, gradEmbeddings: UnsafeMutablePointer<T>?,
        gradWeights: UnsafeMutablePointer<T>, hardNegatives: UnsafeMutablePointer<Int64>? = nil,
        keepBudget keep: Int = keepBudget
    ) throws(LossError) {
        try BLASThreads.singleThreaded { () throws(LossError) in
            try compute(parameters: parameters, blockSize: requested, embeddings: embeddings,
                        weights: weights, rows: n, dimension: d, classes: c, labels: labels,
                        loss: loss, gradEmbeddings: gradEmbeddings, gradWeights: gradWeights,
                        hardNegatives: hardNegatives, keepBudget: keep)
        }
    }

    static func compute<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int,
        embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?,
        rows n: Int, dimension d: Int, classes c: Int, labels: UnsafePointer<Int64>?,
        loss: UnsafeMutablePointer<T>?, gradEmbeddings: UnsafeMutablePointer<T>?,
        gradWeights: UnsafeMutablePointer<T>, hardNegatives: UnsafeMutablePointer<Int64>?,
        keepBudget keep: Int
    ) throws(LossError) {
        try parameters.validateScale(for: T.self)
        let ignore = parameters.ignoreIndex
        let kept = (0..<n).map { labels![$0] != ignore }
        let counted = kept.filter { $0 }.count
        let reduction = parameters.reduction
        // The factor of every row's gradient: 1/count for mean (upstream 1).
        let rowFactor = reduction == .mean ? (counted > 0 ? 1 / Double(counted) : 0) : 1
        let threads = parameters.numThreads == 0 ? RowParallel.availableCores
                                                  : parameters.numThreads
        let xHat = UnsafeMutablePointer<T>.allocate(capacity: Swift.max(n * d, 1))
        let xNorms = UnsafeMutablePointer<Double>.allocate(capacity: Swift.max(n, 1))
        defer { xHat.deallocate(); xNorms.deallocate() }
        if let bad = RowNormalization.normalize(embeddings ?? UnsafePointer(xHat), count: n,
                                                dimension: d, into: xHat, norms: xNorms,
                                                skip: { !kept[$0] }) {
            throw .nonFiniteInput(name: "embeddings", row: bad.row, column: bad.column,
                                  value: bad.value)
        }
        // The weights are checked whole before any is used (the target cosines read them first).
        if let bad = firstNonFinite(weights!, count: c * d, threads: threads) {
            throw .nonFiniteInput(name: "weights", row: bad / d, column: bad % d,
                                  value: Double(weights![bad]))
        }

        // Each row's target logit, mining threshold and running log-sum-exp.
        let scale = T(parameters.scale)
        var targets = [TargetLogit?](repeating: nil, count: n)
        // (Raw storage, so that the dispatched kernels can take a pointer to a row's accumulator;
        // only the rows that are not ignored are initialised. RowAccumulator is a plain value.)
        let accumulators = UnsafeMutablePointer<RowAccumulator<T>>
            .allocate(capacity: Swift.max(n, 1))
        defer { accumulators.deallocate() }
        for i in 0..<n where kept[i] {
            let y = Int(labels![i])
            let w = weights! + y * d
            let inverse = 1 / Swift.max(RowNormalization.norm(w, dimension: d)!,
                                        RowNormalization.floor)
            let dot = RowNormalization.dot(xHat + i * d, w, count: d)
            let target = TargetLogit(cosine: dot * inverse, kind: parameters.target,
                                     margin: parameters.margin)
            targets[i] = target
            (accumulators + i).initialize(to: RowAccumulator(
                negatives: NegativeLogit<T>(kind: parameters.hard,
                                            hardMargin: parameters.hardMargin, target: target),
                scale: scale, countsHardNegatives: hardNegatives != nil))
        }

        let b = blockSize(T.self, rows: n, dimension: d, classes: c, requested: requested)
        let blocks = (c + b - 1) / b
        let keptCount = keptBlocks(T.self, rows: n, blockSize: b, blocks: blocks, budget: keep)
        let keptBuffer = LargeBuffer<T>(capacity: keptCount * n * b)
        let blockBuffer = LargeBuffer<T>(capacity: keptCount < blocks ? n * b : 1)
        let wHatBuffer = LargeBuffer<T>(capacity: b * d)
        let (keptCosines, cosines, wHat) = (keptBuffer.pointer, blockBuffer.pointer,
                                            wHatBuffer.pointer)
        let wNorms = UnsafeMutablePointer<Double>.allocate(capacity: b)
        defer {
            keptBuffer.release(); blockBuffer.release(); wHatBuffer.release()
            wNorms.deallocate()
        }
        let products = ChunkedGEMM<T>(threads: threads)
        let kernels = RowKernels<T>()

        /// Where block k's cosines live: kept, or the one block buffer.
        func cosinesOf(block k: Int) -> UnsafeMutablePointer<T> {
            k < keptCount ? keptCosines + k * n * b : cosines
        }

        /// W^_b for the block of `count` classes at `start`, rows spread over the workers (the
        /// weights were checked finite above).
        func normalizeBlock(start: Int, count: Int) {
            RowParallel.forEachRow(rows: count, columns: d, threads: threads) { j, _ in
                kernels.normalize(weights! + (start + j) * d, 1, d, wHat + j * d, wNorms + j)
                return true
            }
        }

        // First pass: the row statistics.
        for k in 0..<blocks {
            let start = k * b, count = Swift.min(b, c - start)
            guard n > 0 else { break }
            normalizeBlock(start: start, count: count)
            let block = cosinesOf(block: k)
            products.cosines(xHat: xHat, wHat: wHat, n: n, d: d, count: count, into: block)
            RowParallel.forEachRow(rows: n, columns: count, threads: threads) { i, _ in
                guard kept[i] else { return true }
                withUnsafeTemporaryAllocation(of: T.self, capacity: RowKernel<T>.blockSize) {
                    kernels.accumulate(accumulators + i, block + i * count, count,
                                       Int(labels![i]) - start, $0.baseAddress!)
                }
                return true
            }
        }

        // The losses.
        var statistics: [RowStatistics<T>?] = []
        statistics.reserveCapacity(n)
        var losses = [Double](repeating: 0, count: n)
        for i in 0..<n {
            guard kept[i], let target = targets[i] else {
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
        switch reduction {
        case .none:
            for i in 0..<n { loss![i] = T(losses[i]) }
        case .sum, .mean:
            let total = losses.reduce(0, +)  // in row order
            loss![0] = T(reduction == .mean ? (counted > 0 ? total / Double(counted) : 0) : total)
        }

        // Second pass: the gradients.
        gradEmbeddings?.update(repeating: 0, count: n * d)  // dx^, accumulated over blocks
        for k in 0..<blocks {
            let start = k * b, count = Swift.min(b, c - start)
            let dWHat = gradWeights + start * d
            guard n > 0 else {
                dWHat.update(repeating: 0, count: count * d)
                continue
            }
            normalizeBlock(start: start, count: count)
            let block = cosinesOf(block: k)
            if k >= keptCount {
                products.cosines(xHat: xHat, wHat: wHat, n: n, d: d, count: count, into: block)
            }
            statistics.withUnsafeBufferPointer { rows in
                RowParallel.forEachRow(rows: n, columns: count, threads: threads) { i, _ in
                    let segment = block + i * count
                    guard let st = rows[i] else {
                        segment.update(repeating: 0, count: count)
                        return true
                    }
                    withUnsafePointer(to: st) {
                        kernels.segment(segment, count, Int(labels![i]) - start, $0, rowFactor,
                                        segment)
                    }
                    return true
                }
            }
            if let gradEmbeddings {
                products.accumulateEmbeddings(dcos: block, wHat: wHat, n: n, d: d,
                                              count: count, into: gradEmbeddings)
            }
            products.weights(dcos: block, xHat: xHat, n: n, d: d, count: count, into: dWHat)
            RowParallel.forEachRow(rows: count, columns: d, threads: threads) { j, _ in
                kernels.normalizeBackward(wHat + j * d, wNorms + j, 1, d, dWHat + j * d)
                return true
            }
        }
        if let gradEmbeddings {
            RowNormalization.backward(normalized: xHat, norms: xNorms, count: n, dimension: d,
                                      gradient: gradEmbeddings)
        }
    }

    /// The index of the first NaN or infinity among `count` values, if any: a vector pass that
    /// sums v - v (NaN exactly when some v is not finite) over fixed chunks spread over the
    /// workers, then a scalar search of the first chunk that has one.
    static func firstNonFinite<T: LossScalar>(_ values: UnsafePointer<T>, count: Int,
                                              threads: Int) -> Int? {
        let chunk = 1 << 20
        let chunks = (count + chunk - 1) / chunk
        let flagged = UnsafeMutableBufferPointer<Bool>.allocate(capacity: Swift.max(chunks, 1))
        defer { flagged.deallocate() }
        RowParallel.forEachItem(count: chunks, threads: threads) { index in
            let start = index * chunk
            let size = Swift.min(chunk, count - start)
            let width = T.Vector.scalarCount
            let part = values + start
            var poison = T.Vector()
            var k = 0
            while k + width <= size {
                let v = UnsafeRawPointer(part + k).loadUnaligned(as: T.Vector.self)
                poison += v - v
                k += width
            }
            var tail: T = 0
            while k < size { tail += part[k] - part[k]; k += 1 }
            flagged[index] = poison.sum().isNaN || tail.isNaN
        }
        guard let first = (0..<chunks).first(where: { flagged[$0] }) else { return nil }
        let start = first * chunk
        return (start..<Swift.min(count, start + chunk)).first { !values[$0].isFinite }
    }
}
