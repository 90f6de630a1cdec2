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
        let parameters = try LossParameters(abi: params)
        let blockSize = try headBlockSize(params!)
        let rows = Int(n), dimension = Int(d), classes = Int(c)
        guard d >= 1 else { throw ABIError(AMM_ERR_SHAPE, "d = \(d) is invalid: must be >= 1") }
        do { try validateShape(rows: rows, classes: classes) } catch { throw ABIError(error) }
        for (name, value) in [("n", n), ("d", d), ("c", c)] where value > Int64(Int32.max) {
            throw ABIError(AMM_ERR_SHAPE, "\(name) = \(value) is too large: at most "
                + "\(Int32.max) (OpenBLAS indices)")
        }
        for (name, a, b) in [("n * d", rows, dimension), ("c * d", classes, dimension)]
            where a.multipliedReportingOverflow(by: b).overflow {
            throw ABIError(AMM_ERR_SHAPE, "\(name) = \(a) * \(b) overflows a 64-bit element count")
        }
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
                parameters: parameters, blockSize: blockSize, embeddings: embeddings,
                weights: weights, rows: rows, dimension: dimension, classes: classes,
                labels: labels, loss: loss, gradEmbeddings: gradEmbeddings,
                gradWeights: gradWeights!, hardNegatives: hardNegativeCounts(params!))
        } catch { throw ABIError(error) }
    }
}
