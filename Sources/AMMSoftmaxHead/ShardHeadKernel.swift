import AMMSoftmaxCore
import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The fused head sharded by class: the three phases one rank runs with its shard of the class
/// weights, with the caller's collectives between them (docs/FORMULATION.md, "Sharding by
/// class"; the protocol is documented in include/amm_softmax.h).
///
/// Every rank passes the same embeddings (every rank's rows, gathered) and labels (global class
/// ids); `weights` holds the shard's `shard.count` rows. The phases reuse the unsharded head's
/// passes (`HeadCallState`, `HeadBlocks`) over the shard's classes, with the target cosines the
/// ranks agreed on; with one shard the results are those of `HeadKernel.run`, bit for bit.
/// Preconditions as for `HeadKernel.run`, with `shard` validated and labels checked against
/// `shard.total`.
public enum ShardHeadKernel {
    /// Phase 1: the target cosine of each active row whose target is in the shard, 0 for the
    /// others. Checks the embeddings (every active row) and the shard's weights.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func targets<T: GEMMScalar>(
        parameters: LossParameters, embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?,
        rows n: Int, dimension d: Int, shard: ClassShard, labels: UnsafePointer<Int64>?,
        into targetCosines: UnsafeMutablePointer<Double>?
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        // The targets are not known yet: the accumulators this builds are never used.
        let placeholder = [Double](repeating: 0, count: n)
        try placeholder.withUnsafeBufferPointer { (zeros) throws(LossError) in
            let call = try HeadCallState<T>(
                parameters: parameters, embeddings: embeddings, weights: weights, rows: n,
                dimension: d, classes: shard.count, labels: labels, hardNegatives: nil,
                targetSource: .given(zeros.baseAddress, shard: shard))
            defer { call.release() }
            for i in 0..<n {
                // An ignored row's label may be any value (INT64_MIN, say): never offset it.
                guard call.active[i], shard.contains(labels![i]) else {
                    targetCosines![i] = 0
                    continue
                }
                let column = call.targetColumn(i)
                targetCosines![i] = HeadCallState<T>.targetCosine(
                    call.xHat + i * d, weights! + column * d, dimension: d)
            }
        }
    }

    /// Phase 2: each active row's largest negative logit over the shard (`rowMax`, -inf if
    /// none) and its sum of exp(z_j - rowMax) (`rowSum`); -inf and 0 for ignored rows. With
    /// `hardNegatives`, the shard's count of hard negatives of each row.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func statistics<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int, embeddings: UnsafePointer<T>?,
        weights: UnsafePointer<T>?, rows n: Int, dimension d: Int, shard: ClassShard,
        labels: UnsafePointer<Int64>?, targetCosines: UnsafePointer<Double>?,
        rowMax: UnsafeMutablePointer<Double>?, rowSum: UnsafeMutablePointer<Double>?,
        hardNegatives: UnsafeMutablePointer<Int64>? = nil
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        try ShardKernels.validateTargets(targetCosines, rows: n, labels: labels,
                                         ignoreIndex: parameters.ignoreIndex)
        do {  // the products run on the private, single-threaded OpenBLAS (GEMM.swift)
            let call = try HeadCallState<T>(
                parameters: parameters, embeddings: embeddings, weights: weights, rows: n,
                dimension: d, classes: shard.count, labels: labels,
                hardNegatives: hardNegatives,
                targetSource: .given(targetCosines, shard: shard))
            defer { call.release() }
            // Phase 3 is another call: nothing is kept between the passes.
            let blocks = try HeadBlocks<T>(call: call, requestedBlockSize: requested, keepBudget: 0)
            defer { blocks.release() }
            blocks.firstPass(call)
            for i in 0..<n {
                guard call.active[i] else {
                    rowMax![i] = -.infinity
                    rowSum![i] = 0
                    hardNegatives?[i] = 0
                    continue
                }
                let accumulator = call.accumulators[i]
                guard accumulator.reference < .infinity, accumulator.sum.isFinite else {
                    throw .overflow(row: i, elementType: "\(T.self)",
                                    largest: Double(T.greatestFiniteMagnitude))
                }
                rowMax![i] = Double(accumulator.reference)
                rowSum![i] = accumulator.sum
                hardNegatives?[i] = Int64(accumulator.hardNegatives)
            }
        }
    }

    /// Phase 3: the loss of every row from the global statistics (the same on every rank),
    /// reduced, into `loss`; the shard's weight gradient into `gradWeights`; and the shard's
    /// part of the embedding gradient, through the normalisation, into `gradEmbeddings` (the
    /// parts of the ranks sum to the whole). Upstream gradient 1.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func gradient<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int, embeddings: UnsafePointer<T>?,
        weights: UnsafePointer<T>?, rows n: Int, dimension d: Int, shard: ClassShard,
        labels: UnsafePointer<Int64>?, targetCosines: UnsafePointer<Double>?,
        globalMax: UnsafePointer<Double>?, globalSum: UnsafePointer<Double>?,
        loss: UnsafeMutablePointer<T>?, gradEmbeddings: UnsafeMutablePointer<T>?,
        gradWeights: UnsafeMutablePointer<T>?
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        try ShardKernels.validateTargets(targetCosines, rows: n, labels: labels,
                                         ignoreIndex: parameters.ignoreIndex)
        try ShardKernels.validateGlobalStatistics(
            globalMax: globalMax, globalSum: globalSum, rows: n, labels: labels,
            ignoreIndex: parameters.ignoreIndex)
        do {  // the products run on the private, single-threaded OpenBLAS (GEMM.swift)
            let statistics = try ShardKernels.globalStatistics(
                parameters, T.self, rows: n, labels: labels, targetCosines: targetCosines,
                globalMax: globalMax, globalSum: globalSum)
            let call = try HeadCallState<T>(
                parameters: parameters, embeddings: embeddings, weights: weights, rows: n,
                dimension: d, classes: shard.count, labels: labels, hardNegatives: nil,
                targetSource: .given(targetCosines, shard: shard))
            defer { call.release() }
            if let loss {
                try ShardKernels.reduceLosses(statistics, reduction: parameters.reduction,
                                              counted: call.activeCount, into: loss)
            }
            let blocks = try HeadBlocks<T>(call: call, requestedBlockSize: requested, keepBudget: 0)
            defer { blocks.release() }
            if let gradWeights {
                blocks.secondPass(call, statistics: statistics, gradEmbeddings: gradEmbeddings,
                                  gradWeights: gradWeights)
            } else {  // a shard without classes contributes nothing to the embeddings
                gradEmbeddings?.update(repeating: 0, count: n * d)
            }
            if let gradEmbeddings {
                RowNormalization.backward(normalized: call.xHat, norms: call.xNorms, count: n,
                                          dimension: d, gradient: gradEmbeddings)
            }
            try call.checkGradients(embeddings: gradEmbeddings, weights: gradWeights)
        }
    }
}
