import AMMSoftmaxCore
import CAMMSoftmax

/// One call of amm_forward / amm_backward / amm_forward_backward, in either precision:
/// every argument validated, in the order the header documents, then the kernel run.
struct LossCall<T: LossScalar> {
    enum Mode { case forward, backward, forwardBackward }

    let mode: Mode
    let params: UnsafePointer<amm_params>?
    let cos: UnsafePointer<T>?
    let n: Int64
    let c: Int64
    let labels: UnsafePointer<Int64>?
    var loss: UnsafeMutablePointer<T>? = nil
    var gradLoss: UnsafePointer<T>? = nil
    var gradCos: UnsafeMutablePointer<T>? = nil

    func run() throws(ABIError) {
        let abi = try ABIParameters(reading: params, checkingHeadBlockSize: false)
        let parameters = abi.loss
        // The scale's range in T is a parameter check: made with the others, before the shape.
        do { try parameters.validateElementRange(for: T.self) } catch { throw ABIError(error) }
        let rows = Int(n), columns = Int(c)
        do { try validateShape(rows: rows, classes: columns) } catch { throw ABIError(error) }

        // One loss value for mean and sum, n for none.
        let perRowCount = parameters.reduction == .none ? rows : 1
        try require(cos, "cos", elements: rows * columns)
        try require(labels, "labels", elements: rows)
        if mode != .backward { try require(loss, "loss", elements: perRowCount) }
        if mode == .backward { try require(gradLoss, "grad_loss", elements: perRowCount) }
        if mode != .forward { try require(gradCos, "grad_cos", elements: rows * columns) }
        do {
            try validateLabels(UnsafeBufferPointer(start: labels, count: rows),
                               classes: columns, ignoreIndex: parameters.ignoreIndex)
            if mode == .backward {
                // Named as the C parameter is (the Swift and Python APIs call it grad_output).
                try validateGradOutput(UnsafeBufferPointer(start: gradLoss, count: perRowCount),
                                       name: "grad_loss")
            }
            try LossKernels.run(
                parameters: parameters, cos: cos, rows: rows, columns: columns, labels: labels,
                outputs: .init(loss: mode == .backward ? nil : loss,
                               gradient: mode == .forward ? nil : gradCos,
                               upstream: mode == .backward ? gradLoss : nil,
                               hardNegatives: abi.hardNegatives))
        } catch { throw ABIError(error) }
    }
}
