/// The loss as a Swift value: parameters once, then forward and backward on row-major arrays.
///
/// ```swift
/// let loss = AMMSoftmaxLoss()                       // AMM-Softmax with the defaults
/// let (value, gradient) = try loss.forwardBackward(cos: cos, labels: labels, classes: c)
/// ```
/// `cos` holds N x C cosines, row-major (`cos[i * classes + j]`); `labels` holds N class
/// indices in [0, C) or `parameters.ignoreIndex`. The loss comes back as 1 value for mean and
/// sum and N values for none. Every method validates its inputs and throws `LossError` naming
/// the bad parameter, row, column and value; nothing is modified.
public struct AMMSoftmaxLoss: Sendable {
    public var parameters: LossParameters

    public init(_ parameters: LossParameters = LossParameters()) {
        self.parameters = parameters
    }

    /// The loss: 1 value (mean, sum) or N values (none).
    public func forward<T: LossScalar>(cos: [T], labels: [Int64], classes: Int)
        throws(LossError) -> [T]
    {
        try run(cos: cos, labels: labels, classes: classes, upstream: nil, wantsGradient: false)
            .loss
    }

    /// The gradient with respect to `cos`, times `gradOutput` (1 value for mean and sum, N for
    /// none; finite).
    public func backward<T: LossScalar>(cos: [T], labels: [Int64], classes: Int,
                                        gradOutput: [T]) throws(LossError) -> [T]
    {
        try run(cos: cos, labels: labels, classes: classes, upstream: gradOutput,
                wantsGradient: true).gradient
    }

    /// The loss and its gradient with respect to `cos` in one call.
    public func forwardBackward<T: LossScalar>(cos: [T], labels: [Int64], classes: Int)
        throws(LossError) -> (loss: [T], gradient: [T])
    {
        try run(cos: cos, labels: labels, classes: classes, upstream: nil, wantsGradient: true)
    }

    /// Validates (parameters, shape, labels, then the upstream gradient: the C interface's
    /// order), then runs the kernel. The loss is computed unless an upstream gradient is
    /// given (a backward call); the gradient when `wantsGradient`.
    private func run<T: LossScalar>(
        cos: [T], labels: [Int64], classes: Int, upstream: [T]?, wantsGradient: Bool
    ) throws(LossError) -> (loss: [T], gradient: [T]) {
        try parameters.validate()
        try parameters.validateElementRange(for: T.self)
        let rows = labels.count
        try validateShape(rows: rows, classes: classes)
        guard cos.count == rows * classes else {
            throw .shape("cos has \(cos.count) values but must have n * c = \(rows) * \(classes)")
        }
        try validateLabels(labels, classes: classes, ignoreIndex: parameters.ignoreIndex)
        if let upstream {
            let expected = parameters.reduction == .none ? rows : 1
            guard upstream.count == expected else {
                throw .shape("grad_output has \(upstream.count) values but must have "
                    + "\(expected) for reduction \(parameters.reduction)")
            }
            try validateGradOutput(upstream)
        }

        let wantsLoss = upstream == nil
        var loss = [T](repeating: 0,
                       count: wantsLoss ? (parameters.reduction == .none ? rows : 1) : 0)
        var gradient = [T](repeating: 0, count: wantsGradient ? cos.count : 0)
        let parameters = self.parameters
        try cos.withUnsafeBufferPointer { (c) throws(LossError) in
            try labels.withUnsafeBufferPointer { (l) throws(LossError) in
                try loss.withUnsafeMutableBufferPointer { (lossOut) throws(LossError) in
                    try gradient.withUnsafeMutableBufferPointer { (g) throws(LossError) in
                        let u = upstream ?? []
                        try u.withUnsafeBufferPointer { (u) throws(LossError) in
                            try LossKernels.run(
                                parameters: parameters, cos: c.baseAddress, rows: rows,
                                columns: classes, labels: l.baseAddress,
                                outputs: .init(
                                    loss: wantsLoss ? lossOut.baseAddress : nil,
                                    gradient: wantsGradient ? g.baseAddress : nil,
                                    upstream: upstream == nil ? nil : u.baseAddress))
                        }
                    }
                }
            }
        }
        return (loss, gradient)
    }
}
