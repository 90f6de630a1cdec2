import AMMSoftmaxCore
import AMMSoftmaxHead
import CAMMSoftmax

/// One call of a sharded phase (amm_shard_*), on cosine logits or through the head, in either
/// precision: every argument validated in the order the header documents (parameters, the
/// shard and the shape, the pointers, the labels against c_total), then the phase run.
struct ShardCall<T: GEMMScalar> {
    enum Phase { case target, statistics, gradient }

    let phase: Phase
    let params: UnsafePointer<amm_params>?
    /// The cosines (n x c_local) on cosine logits; nil for the head.
    var cos: UnsafePointer<T>? = nil
    /// The embeddings (n x d) and the shard's weights (c_local x d) for the head.
    var embeddings: UnsafePointer<T>? = nil
    var weights: UnsafePointer<T>? = nil
    var isHead = false
    let n: Int64
    var d: Int64 = 0
    let cLocal: Int64, classStart: Int64, cTotal: Int64
    let labels: UnsafePointer<Int64>?
    var targetCos: UnsafeMutablePointer<Double>? = nil
    var rowMax: UnsafeMutablePointer<Double>? = nil
    var rowSum: UnsafeMutablePointer<Double>? = nil
    var globalMax: UnsafePointer<Double>? = nil
    var globalSum: UnsafePointer<Double>? = nil
    var gradLoss: UnsafePointer<T>? = nil
    var loss: UnsafeMutablePointer<T>? = nil
    var gradCos: UnsafeMutablePointer<T>? = nil
    var gradEmbeddings: UnsafeMutablePointer<T>? = nil
    var gradWeights: UnsafeMutablePointer<T>? = nil

    func run() throws(ABIError) {
        let abi = try ABIParameters(reading: params, checkingHeadBlockSize: isHead)
        let parameters = abi.loss
        let shard = ClassShard(start: Int(clamping: classStart), count: Int(clamping: cLocal),
                               total: Int(clamping: cTotal))
        let rows = Int(n)
        do {
            try parameters.validateElementRange(for: T.self)
            try shard.validate()
            if isHead {
                // The head's limits apply to the shard's classes (c_local is its c).
                try HeadKernel.validateShape(rows: n, dimension: d, classes: Swift.max(cLocal, 1))
            } else {
                try validateShape(rows: rows, classes: Swift.max(shard.count, 1))
            }
        } catch { throw ABIError(error) }
        let columns = shard.count, dimension = Int(d)
        let perRowCount = parameters.reduction == .none ? rows : 1
        if isHead {
            try require(embeddings, "embeddings", elements: rows * dimension)
            try require(weights, "weights", elements: columns * dimension)
        } else {
            try require(cos, "cos", elements: rows * columns)
        }
        try require(labels, "labels", elements: rows)
        try require(targetCos, "target_cos", elements: rows)
        switch phase {
        case .target:
            break
        case .statistics:
            try require(rowMax, "row_max", elements: rows)
            try require(rowSum, "row_sum", elements: rows)
        case .gradient:
            try require(globalMax, "global_max", elements: rows)
            try require(globalSum, "global_sum", elements: rows)
            if isHead {
                try require(loss, "loss", elements: perRowCount)
                try require(gradEmbeddings, "grad_embeddings", elements: rows * dimension)
                try require(gradWeights, "grad_weights", elements: columns * dimension)
            } else {
                try require(gradCos, "grad_cos", elements: rows * columns)
            }
        }
        do {
            try validateLabels(UnsafeBufferPointer(start: labels, count: rows),
                               classes: shard.total, ignoreIndex: parameters.ignoreIndex)
            if let gradLoss {
                try validateGradOutput(UnsafeBufferPointer(start: gradLoss, count: perRowCount),
                                       name: "grad_loss")
            }
            try compute(parameters, shard: shard, rows: rows, dimension: dimension,
                        blockSize: abi.headBlockSize, hardNegatives: abi.hardNegatives)
        } catch { throw ABIError(error) }
    }

    private func compute(_ parameters: LossParameters, shard: ClassShard, rows: Int,
                         dimension: Int, blockSize: Int,
                         hardNegatives: UnsafeMutablePointer<Int64>?) throws(LossError) {
        let targets = UnsafePointer(targetCos)
        switch (phase, isHead) {
        case (.target, false):
            try ShardKernels.targets(parameters: parameters, cos: cos, rows: rows, shard: shard,
                                     labels: labels, into: targetCos)
        case (.statistics, false):
            try ShardKernels.statistics(
                parameters: parameters, cos: cos, rows: rows, shard: shard, labels: labels,
                targetCosines: targets, rowMax: rowMax, rowSum: rowSum,
                hardNegatives: hardNegatives)
        case (.gradient, false):
            try ShardKernels.gradient(
                parameters: parameters, cos: cos, rows: rows, shard: shard, labels: labels,
                targetCosines: targets, globalMax: globalMax, globalSum: globalSum,
                upstream: gradLoss, loss: loss, gradient: gradCos)
        case (.target, true):
            try ShardHeadKernel.targets(
                parameters: parameters, embeddings: embeddings, weights: weights, rows: rows,
                dimension: dimension, shard: shard, labels: labels, into: targetCos)
        case (.statistics, true):
            try ShardHeadKernel.statistics(
                parameters: parameters, blockSize: blockSize, embeddings: embeddings,
                weights: weights, rows: rows, dimension: dimension, shard: shard,
                labels: labels, targetCosines: targets, rowMax: rowMax, rowSum: rowSum,
                hardNegatives: hardNegatives)
        case (.gradient, true):
            try ShardHeadKernel.gradient(
                parameters: parameters, blockSize: blockSize, embeddings: embeddings,
                weights: weights, rows: rows, dimension: dimension, shard: shard,
                labels: labels, targetCosines: targets, globalMax: globalMax,
                globalSum: globalSum, loss: loss, gradEmbeddings: gradEmbeddings,
                gradWeights: gradWeights)
        }
    }
}
