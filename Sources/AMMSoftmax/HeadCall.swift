import AMMSoftmaxCore
import AMMSoftmaxHead
import CAMMSoftmax

/// One call of amm_head_forward_backward, in either precision: every argument validated, in
/// the order the header documents, then the fused head run.
struct HeadCall<T: GEMMScalar> {
    let params: UnsafePointer<amm_params>?
    let embeddings: UnsafePointer<T>?
    let weights: UnsafePointer<T>?
    let n: Int64, d: Int64, c: Int64
    let labels: UnsafePointer<Int64>?
    let loss: UnsafeMutablePointer<T>?
    let gradEmbeddings: UnsafeMutablePointer<T>?
    let gradWeights: UnsafeMutablePointer<T>?

    func run() throws(ABIError) {
        let abi = try ABIParameters(reading: params, checkingHeadBlockSize: true)
        let parameters = abi.loss
        do {
            // The scale's range in T is a parameter check: made with the others, before the
            // shape.
            try parameters.validateElementRange(for: T.self)
            try HeadKernel.validateShape(rows: n, dimension: d, classes: c)
        } catch { throw ABIError(error) }
        let rows = Int(n), dimension = Int(d), classes = Int(c)
        let perRowCount = parameters.reduction == .none ? rows : 1
        try require(embeddings, "embeddings", elements: rows * dimension)
        try require(weights, "weights", elements: classes * dimension)
        try require(labels, "labels", elements: rows)
        try require(loss, "loss", elements: perRowCount)
        try require(gradEmbeddings, "grad_embeddings", elements: rows * dimension)
        try require(gradWeights, "grad_weights", elements: classes * dimension)
        do {
            try validateLabels(UnsafeBufferPointer(start: labels, count: rows),
                               classes: classes, ignoreIndex: parameters.ignoreIndex)
            try HeadKernel.run(
                parameters: parameters, blockSize: abi.headBlockSize, embeddings: embeddings,
                weights: weights, rows: rows, dimension: dimension, classes: classes,
                labels: labels, loss: loss, gradEmbeddings: gradEmbeddings,
                gradWeights: gradWeights!, hardNegatives: abi.hardNegatives,
                targetCosines: abi.targetCosines)
        } catch { throw ABIError(error) }
    }
}
