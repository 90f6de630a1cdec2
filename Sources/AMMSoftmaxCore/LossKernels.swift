import AMMSoftmaxKernels

/// The loss kernels over a whole N x C matrix: forward, backward and both at once.
///
/// These are the entry points the C ABI and the Swift API call. They expect validated
/// parameters, shape and labels (`LossParameters.validate`, `validateShape`, `validateLabels`)
/// and check the one thing only a full read can: that every row that is not ignored is finite.
public enum LossKernels {
    /// What to compute and where to put it.
    public struct Outputs<T: LossScalar> {
        /// 1 value (mean, sum) or N values (none); nil to skip the loss.
        public var loss: UnsafeMutablePointer<T>?
        /// N x C; nil to skip the gradient.
        public var gradient: UnsafeMutablePointer<T>?
        /// The upstream gradient: 1 value (mean, sum) or N values (none); nil means 1.
        public var upstream: UnsafePointer<T>?
        /// N counts of the negatives mined as hard in each row (0 for ignored rows); nil to
        /// skip counting.
        public var hardNegatives: UnsafeMutablePointer<Int64>?
        /// N target cosines c_{i,y_i}, widened to Double (0 for ignored rows); nil to skip.
        public var targetCosines: UnsafeMutablePointer<Double>?

        public init(loss: UnsafeMutablePointer<T>? = nil, gradient: UnsafeMutablePointer<T>? = nil,
                    upstream: UnsafePointer<T>? = nil,
                    hardNegatives: UnsafeMutablePointer<Int64>? = nil,
                    targetCosines: UnsafeMutablePointer<Double>? = nil) {
            self.loss = loss
            self.gradient = gradient
            self.upstream = upstream
            self.hardNegatives = hardNegatives
            self.targetCosines = targetCosines
        }
    }

    /// The gradient size (bytes) from which it is written with streaming stores
    /// (`GradientStream`): about the last-level cache of the machine it was tuned on, so that a
    /// smaller gradient stays in the cache, where the caller reads it next.
    public static let streamingThreshold = 32 << 20

    /// Computes the loss and/or the gradient of `cos` (rows x columns, row-major).
    ///
    /// - Precondition: parameters, shape and labels are valid; pointers are valid for the sizes
    ///   above (they may be nil only when the matching size is 0); `upstream` is finite.
    /// - Throws: `LossError.parameter` if the scale is not finite in T;
    ///   `LossError.nonFiniteCosine` for the lowest row (and in it the lowest column) that
    ///   holds NaN or infinity and is not ignored; `LossError.overflow` for the lowest row
    ///   whose logits overflow T. The outputs are then unspecified.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func run<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
        labels: UnsafePointer<Int64>?, outputs: Outputs<T>
    ) throws(LossError) {
        try run(parameters: parameters, cos: cos, rows: rows, columns: columns, labels: labels,
                outputs: outputs, streamingThreshold: streamingThreshold)
    }

    /// `run` with the gradient size from which it is streamed given (tests force either way).
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    package static func run<T: LossScalar>(
        parameters: LossParameters, cos: UnsafePointer<T>?, rows: Int, columns: Int,
        labels: UnsafePointer<Int64>?, outputs: Outputs<T>, streamingThreshold: Int
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        let pass = try LossPass<T>(
            parameters: parameters, cos: cos, rows: rows, columns: columns, labels: labels,
            outputs: outputs, streamingThreshold: streamingThreshold)
        defer { pass.release() }
        try pass.run()
    }
}
