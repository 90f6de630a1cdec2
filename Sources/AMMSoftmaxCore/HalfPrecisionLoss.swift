import AMMSoftmaxKernels

/// The loss on cosines stored in 16 bits (docs/FORMULATION.md, "Half precision"), computed in
/// Float by the row kernels' 16-bit entries (a `LossPass` with a storage format): the one-pass
/// loop reads the 16-bit row directly, widening each value exactly in registers (the blocks
/// taken in two steps, the first and the target's, are widened into a block buffer), with per-row
/// quantities and the reduction in Double; the gradient pass forms each entry in Float as for a
/// Float row and rounds it once to the storage type (to nearest, ties to even) as it writes it:
/// from `LossKernels.streamingThreshold` bytes of gradient up into a 16-bit scratch row that is
/// streamed out during the next row, as the Float path streams its own, below that straight into
/// the caller's row. The caller's memory is read once and written once, in 16 bits; the results
/// are those of the Float path on the widened row, bit for bit.
public enum HalfPrecisionLoss {
    /// The storage formats.
    public typealias Format = HalfStorage

    /// Computes the loss and/or the gradient of `cos` (rows x columns of 16-bit values, row-major)
    /// as `LossKernels.run` does for Float, with the same preconditions and errors; a gradient
    /// entry that rounds beyond the format's range is `.outputOverflow`.
    public static func run(
        parameters: LossParameters, format: Format, cos: UnsafePointer<UInt16>?, rows: Int,
        columns: Int, labels: UnsafePointer<Int64>?, outputs: LossKernels.Outputs<Float>,
        gradient: UnsafeMutablePointer<UInt16>?
    ) throws(LossError) {
        try run(parameters: parameters, format: format, cos: cos, rows: rows, columns: columns,
                labels: labels, outputs: outputs, gradient: gradient,
                streamingThreshold: LossKernels.streamingThreshold)
    }

    /// `run` with the size (in bytes of the gradient) from which the gradient is made in
    /// scratch rows and streamed out, for the tests of both ways.
    package static func run(
        parameters: LossParameters, format: Format, cos: UnsafePointer<UInt16>?, rows: Int,
        columns: Int, labels: UnsafePointer<Int64>?, outputs: LossKernels.Outputs<Float>,
        gradient: UnsafeMutablePointer<UInt16>?, streamingThreshold: Int
    ) throws(LossError) {
        try parameters.validateElementRange(for: Float.self)
        var floatOutputs = outputs
        floatOutputs.gradient = nil
        let pass = try LossPass<Float>(
            parameters: parameters, cos: nil, rows: rows, columns: columns, labels: labels,
            outputs: floatOutputs, storage: format, cos16: cos, gradient16: gradient,
            streamingThreshold: streamingThreshold)
        defer { pass.release() }
        try pass.run()
    }
}
