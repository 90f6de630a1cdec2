import AMMSoftmaxCore
import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The fused head: embeddings x (N x D) and class weights W (C x D) in; the loss on
/// cos = normalize(x) normalize(W)^T, and its gradients with respect to x and W, out
/// (FORMULATION.md, "Head") -- without ever holding the N x C matrix.
///
/// The classes are processed in blocks of B (`blockSize`), as Cut Cross-Entropy does:
/// 1. x^ = normalize(x) (N x D), and each row's target cosine c_y = <x^_i, W^_y> by an indexed
///    dot product, which fixes the row's target logit and its mining threshold up front.
/// 2. First pass, per block: W^_b = normalize(W_b), cos_b = x^ W^_b^T (sgemm/dgemm), and every
///    row's running log-sum-exp updated with its B cosines (RowAccumulator).
/// 3. The row losses and statistics, and the reduction.
/// 4. Second pass, per block: W^_b and cos_b again, cos_b turned in place into dloss/dcos_b,
///    then dx^ += dcos_b W^_b and dW^_b = dcos_b^T x^ (two more products), and dW_b through the
///    normalisation.
/// 5. dx through the normalisation.
/// Four products of N x D x C multiply-adds in all: the three the gradient needs, and the
/// first pass's cosines, which cannot be kept without the N x C matrix.
///
/// Extra memory: x^ (N x D), one block's cosines (N x B) and normalised weights (B x D), and
/// O(N) per-row state. B is chosen so that the block takes at most `blockBudget` bytes:
/// B = min(C, 8192, max(16, blockBudget / ((N + D) * element size)), a multiple of 16), unless
/// given. So the extra memory is N D + B (N + D) elements + O(N), whatever C is: at most
/// 32 MiB + N D elements for the automatic block.
public enum HeadKernel {
    /// Bytes a block of cosines and normalised weights may take (automatic block size).
    public static let blockBudget = 32 << 20

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
        gradWeights: UnsafeMutablePointer<T>, hardNegatives: UnsafeMutablePointer<Int64>? = nil
    ) throws(LossError) {
        try BLASThreads.singleThreaded { () throws(LossError) in
            try compute(parameters: parameters, blockSize: requested, embeddings: embeddings,
                        weights: weights, rows: n, dimension: d, classes: c, labels: labels,
                        loss: loss, gradEmbeddings: gradEmbeddings, gradWeights: gradWeights,
                        hardNegatives: hardNegatives)
        }
    }

    static func compute<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int,
        embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?,
        rows n: Int, dimension d: Int, classes c: Int, labels: UnsafePointer<Int64>?,
        loss: UnsafeMutablePointer<T>?, gradEmbeddings: UnsafeMutablePointer<T>?,
        gradWeights: UnsafeMutablePointer<T>, hardNegatives: UnsafeMutablePointer<Int64>?
    ) throws(LossError) {
        try parameters.validateScale(for: T.self)
        let ignore = parameters.ignoreIndex
        let kept = (0..<n).map { labels![$0] != ignore }
        let counted = kept.filter { $0 }.count
        let reduction = parameters.reduction
        // The factor of every row's gradient: 1/count for mean (upstream 1).
        let rowFactor = reduction == .mean ? (counted > 0 ? 1 / Double(counted) : 0) : 1
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
        if let bad = firstNonFinite(weights!, count: c * d) {
            throw .nonFiniteInput(name: "weights", row: bad / d, column: bad % d,
                                  value: Double(weights![bad]))
        }

        // Each row's target logit, mining threshold and running log-sum-exp.
        let scale = T(parameters.scale)
        var targets = [TargetLogit?](repeating: nil, count: n)
        var accumulators: [RowAccumulator<T>?] = (0..<n).map { i in
            guard kept[i] else { return nil }
            let y = Int(labels![i])
            let w = weights! + y * d
            let inverse = 1 / Swift.max(RowNormalization.norm(w, dimension: d)!,
                                        RowNormalization.floor)
            let dot = RowNormalization.dot(xHat + i * d, w, count: d)
            let target = TargetLogit(cosine: dot * inverse, kind: parameters.target,
                                     margin: parameters.margin)
            targets[i] = target
            return RowAccumulator(
                negatives: NegativeLogit<T>(kind: parameters.hard,
                                            hardMargin: parameters.hardMargin, target: target),
                scale: scale, countsHardNegatives: hardNegatives != nil)
        }

        let b = blockSize(T.self, rows: n, dimension: d, classes: c, requested: requested)
        let cosines = UnsafeMutablePointer<T>.allocate(capacity: Swift.max(n * b, 1))
        let wHat = UnsafeMutablePointer<T>.allocate(capacity: b * d)
        let wNorms = UnsafeMutablePointer<Double>.allocate(capacity: b)
        defer { cosines.deallocate(); wHat.deallocate(); wNorms.deallocate() }
        let threads = parameters.numThreads == 0 ? RowParallel.availableCores
                                                  : parameters.numThreads
        let products = ChunkedGEMM<T>(threads: threads)

        /// W^_b and cos_b = x^ W^_b^T for the block of `count` classes at `start`.
        func blockCosines(start: Int, count: Int) {
            _ = RowNormalization.normalize(weights! + start * d, count: count, dimension: d,
                                           into: wHat, norms: wNorms)
            guard n > 0 else { return }
            products.cosines(xHat: xHat, wHat: wHat, n: n, d: d, count: count, into: cosines)
        }

        // First pass: the row statistics.
        for start in stride(from: 0, to: c, by: b) {
            let count = Swift.min(b, c - start)
            blockCosines(start: start, count: count)
            accumulators.withUnsafeMutableBufferPointer { rows in
                RowParallel.forEachRow(rows: n, columns: count, threads: threads) { i, _ in
                    guard rows[i] != nil else { return true }
                    let y = Int(labels![i]) - start
                    withUnsafeTemporaryAllocation(of: T.self, capacity: RowKernel<T>.blockSize) {
                        scratch in
                        var sub = 0
                        while sub < count {
                            let size = Swift.min(RowKernel<T>.blockSize, count - sub)
                            _ = rows[i]!.add(cosines + i * count + sub, count: size,
                                             target: y - sub, into: scratch.baseAddress!,
                                             slopes: nil)
                            sub += size
                        }
                    }
                    return true
                }
            }
        }

        // The losses.
        var statistics: [RowStatistics<T>?] = []
        statistics.reserveCapacity(n)
        var losses = [Double](repeating: 0, count: n)
        for i in 0..<n {
            hardNegatives?[i] = Int64(accumulators[i]?.hardNegatives ?? 0)
            guard let accumulator = accumulators[i], let target = targets[i] else {
                statistics.append(nil)
                continue
            }
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
        for start in stride(from: 0, to: c, by: b) {
            let count = Swift.min(b, c - start)
            blockCosines(start: start, count: count)
            let dWHat = gradWeights + start * d
            guard n > 0 else {
                dWHat.update(repeating: 0, count: count * d)
                continue
            }
            statistics.withUnsafeBufferPointer { rows in
                RowParallel.forEachRow(rows: n, columns: count, threads: threads) { i, _ in
                    let segment = cosines + i * count
                    guard let st = rows[i] else {
                        segment.update(repeating: 0, count: count)
                        return true
                    }
                    RowKernel<T>.writeGradientSegment(
                        segment, count: count, target: Int(labels![i]) - start, statistics: st,
                        upstream: rowFactor, into: segment)
                    return true
                }
            }
            if let gradEmbeddings {
                products.accumulateEmbeddings(dcos: cosines, wHat: wHat, n: n, d: d,
                                              count: count, into: gradEmbeddings)
            }
            products.weights(dcos: cosines, xHat: xHat, n: n, d: d, count: count, into: dWHat)
            RowNormalization.backward(normalized: wHat, norms: wNorms, count: count,
                                      dimension: d, gradient: dWHat)
        }
        if let gradEmbeddings {
            RowNormalization.backward(normalized: xHat, norms: xNorms, count: n, dimension: d,
                                      gradient: gradEmbeddings)
        }
    }

    /// The index of the first NaN or infinity among `count` values, if any: a vector pass that
    /// sums v - v (NaN exactly when some v is not finite), then a scalar search if needed.
    static func firstNonFinite<T: LossScalar>(_ values: UnsafePointer<T>, count: Int) -> Int? {
        let width = T.Vector.scalarCount
        var poison = T.Vector()
        var k = 0
        while k + width <= count {
            let v = UnsafeRawPointer(values + k).loadUnaligned(as: T.Vector.self)
            poison += v - v
            k += width
        }
        var tail: T = 0
        while k < count { tail += values[k] - values[k]; k += 1 }
        guard poison.sum().isNaN || tail.isNaN else { return nil }
        return (0..<count).first { !values[$0].isFinite }
    }
}
