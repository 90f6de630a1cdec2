import AMMSoftmaxCore
import CAMMSoftmax

/// Which of amm_forward, amm_backward and amm_forward_backward a call is.
enum LossMode { case forward, backward, forwardBackward }

/// The checks every loss call makes, in the order the header documents: the parameters (the
/// element-type ranges for `Compute`, the type the kernels compute in), the shape, the pointers,
/// the labels, the upstream gradient. Returns the decoded parameters and the shape.
func checkLossCall<Compute: LossScalar, Upstream: BinaryFloatingPoint>(
    _ mode: LossMode, computingIn _: Compute.Type, params: UnsafePointer<amm_params>?,
    cos: UnsafeRawPointer?, n: Int64, c: Int64, labels: UnsafePointer<Int64>?,
    loss: UnsafeMutableRawPointer?, gradLoss: UnsafePointer<Upstream>?,
    gradCos: UnsafeMutableRawPointer?
) throws(ABIError) -> (abi: ABIParameters, rows: Int, columns: Int) {
    let abi = try ABIParameters(reading: params, checkingHeadBlockSize: false)
    let parameters = abi.loss
    // The ranges in the element type are parameter checks: made with the others, before the shape.
    do { try parameters.validateElementRange(for: Compute.self) } catch { throw ABIError(error) }
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
    } catch { throw ABIError(error) }
    return (abi, rows, columns)
}

/// One call of amm_forward / amm_backward / amm_forward_backward in f32 or f64: every argument
/// validated, then the kernel run.
struct LossCall<T: LossScalar> {
    let mode: LossMode
    let params: UnsafePointer<amm_params>?
    let cos: UnsafePointer<T>?
    let n: Int64
    let c: Int64
    let labels: UnsafePointer<Int64>?
    var loss: UnsafeMutablePointer<T>? = nil
    var gradLoss: UnsafePointer<T>? = nil
    var gradCos: UnsafeMutablePointer<T>? = nil

    func run() throws(ABIError) {
        let (abi, rows, columns) = try checkLossCall(
            mode, computingIn: T.self, params: params, cos: cos, n: n, c: c, labels: labels,
            loss: loss, gradLoss: gradLoss, gradCos: gradCos)
        do {
            try LossKernels.run(
                parameters: abi.loss, cos: cos, rows: rows, columns: columns, labels: labels,
                outputs: .init(loss: mode == .backward ? nil : loss,
                               gradient: mode == .forward ? nil : gradCos,
                               upstream: mode == .backward ? gradLoss : nil,
                               hardNegatives: abi.hardNegatives,
                               targetCosines: abi.targetCosines))
        } catch { throw ABIError(error) }
    }
}

/// The same for cosines stored in 16 bits (bf16, f16): computed in Float, the loss and the
/// upstream gradient in Float, the gradient stored in 16 bits.
struct HalfLossCall {
    let mode: LossMode
    let format: HalfPrecisionLoss.Format
    let params: UnsafePointer<amm_params>?
    let cos: UnsafePointer<UInt16>?
    let n: Int64
    let c: Int64
    let labels: UnsafePointer<Int64>?
    var loss: UnsafeMutablePointer<Float>? = nil
    var gradLoss: UnsafePointer<Float>? = nil
    var gradCos: UnsafeMutablePointer<UInt16>? = nil

    func run() throws(ABIError) {
        let (abi, rows, columns) = try checkLossCall(
            mode, computingIn: Float.self, params: params, cos: cos, n: n, c: c, labels: labels,
            loss: loss, gradLoss: gradLoss, gradCos: gradCos)
        do {
            try HalfPrecisionLoss.run(
                parameters: abi.loss, format: format, cos: cos, rows: rows, columns: columns,
                labels: labels,
                outputs: .init(loss: mode == .backward ? nil : loss,
                               upstream: mode == .backward ? gradLoss : nil,
                               hardNegatives: abi.hardNegatives,
                               targetCosines: abi.targetCosines),
                gradient: mode == .forward ? nil : gradCos)
        } catch { throw ABIError(error) }
    }
}
