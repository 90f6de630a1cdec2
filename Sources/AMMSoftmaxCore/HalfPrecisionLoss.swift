import AMMSoftmaxKernels
import CHalfPrecision

/// The loss on cosines stored in 16 bits (docs/FORMULATION.md, "Half precision"): each row is
/// widened exactly to Float into a per-worker scratch row, computed by the Float row kernels
/// (per-row quantities and the reduction in Double), and its gradient rounded to the storage
/// type, to nearest with ties to even. The caller's memory is read and written once, in 16 bits.
public enum HalfPrecisionLoss {
    /// The storage formats.
    public enum Format: Sendable {
        /// bfloat16: float's exponent, 8 bits of significand (largest about 3.39e38).
        case bfloat16
        /// IEEE binary16: 5 exponent bits, 11 of significand (largest 65504).
        case float16

        /// The name an error message gives the element type.
        public var name: String { self == .bfloat16 ? "bfloat16" : "float16" }
        /// The largest finite value.
        public var largest: Double { self == .bfloat16 ? 0x1.FEp127 : 65504 }
    }

    /// Computes the loss and/or the gradient of `cos` (rows x columns of 16-bit values, row-major)
    /// as `LossKernels.run` does for Float, with the same preconditions and errors; a gradient
    /// entry that rounds beyond the format's range is `.outputOverflow`.
    public static func run(
        parameters: LossParameters, format: Format, cos: UnsafePointer<UInt16>?, rows: Int,
        columns: Int, labels: UnsafePointer<Int64>?, outputs: LossKernels.Outputs<Float>,
        gradient: UnsafeMutablePointer<UInt16>?
    ) throws(LossError) {
        try parameters.validateElementRange(for: Float.self)
        let kernels = RowKernels<Float>()
        let ignore = parameters.ignoreIndex
        let counted = LossReduction.countedRows(labels, rows: rows, ignoreIndex: ignore)
        let rowFactor = LossReduction.rowFactor(parameters.reduction, upstream: outputs.upstream,
                                                counted: counted)
        let workers = RowParallel.workerCount(rows: rows, columns: columns,
                                              threads: parameters.numThreads)
        // Per worker (only where there are rows): the widened row, its gradient, the block
        // references and the statistics; per row its loss.
        let rowWorkers = rows > 0 ? workers : 0
        let blocks = gradient == nil ? 1 : RowKernel<Float>.blockCount(columns: columns)
        let arena = ScratchArena()
        defer { arena.release() }
        let perWorkerRows = try ScratchArena.count(rowWorkers, times: columns)
        let widened = try arena.buffer(Float.self, count: perWorkerRows)
        let gradients = try arena.buffer(Float.self, count: gradient == nil ? 0 : perWorkerRows)
        let references = try arena.buffer(Float.self,
                                          count: try ScratchArena.count(rowWorkers, times: blocks))
        let statistics = try arena.buffer(RowStatistics<Float>.self, count: workers)
        let rowLosses = try arena.buffer(Double.self, count: rows)
        let failures = FirstFailure(rows: rows, columns: columns, threads: parameters.numThreads)
        defer { failures.release() }

        RowParallel.forEachRow(rows: rows, columns: columns, threads: parameters.numThreads) {
            i, worker in
            let label = labels![i]
            let out = gradient.map { $0 + i * columns }
            guard label != ignore else {
                rowLosses[i] = 0
                outputs.hardNegatives?[i] = 0
                out?.update(repeating: 0, count: columns)
                return true
            }
            let row = widened.baseAddress! + worker * columns
            let source = cos! + i * columns
            switch format {
            case .bfloat16: amm_widen_bf16(source, row, columns)
            case .float16: amm_widen_f16(source, row, columns)
            }
            let gradientRow = out == nil ? nil : gradients.baseAddress! + worker * columns
            let blockReferences = out == nil ? nil : references.baseAddress! + worker * blocks
            let result = statistics.baseAddress! + worker
            if let error = kernels.rowStatistics(
                of: i, row, columns: columns, label: Int(label), parameters: parameters,
                gradientRow: gradientRow, blockReferences: blockReferences,
                countsHardNegatives: outputs.hardNegatives != nil, stream: nil, into: result) {
                failures.record(row: i, worker: worker, error)
                return false
            }
            rowLosses[i] = result.pointee.loss
            outputs.hardNegatives?[i] = Int64(result.pointee.hardNegatives)
            if let out, let gradientRow, let blockReferences {
                let upstream = LossReduction.upstream(ofRow: i, parameters.reduction,
                                                      upstream: outputs.upstream,
                                                      rowFactor: rowFactor)
                kernels.gradient(columns, Int(label), result, blockReferences, upstream,
                                 gradientRow)
                // An entry that rounds beyond the format's range (or is already beyond Float's,
                // for huge scales: the narrowing reports any result that is not finite) is an
                // error, never an infinity.
                let overflowed: Int
                switch format {
                case .bfloat16: overflowed = amm_narrow_bf16(gradientRow, out, columns)
                case .float16: overflowed = amm_narrow_f16(gradientRow, out, columns)
                }
                if overflowed >= 0 {
                    failures.record(row: i, worker: worker, .outputOverflow(
                        name: "grad_cos[\(i), \(overflowed)]", elementType: format.name,
                        largest: format.largest))
                    return false
                }
            }
            return true
        }
        if let error = failures.first { throw error }
        if let loss = outputs.loss {
            try LossReduction.write(UnsafeBufferPointer(rowLosses), count: rows,
                                    reduction: parameters.reduction, counted: counted, into: loss)
        }
        if let targetCosines = outputs.targetCosines {
            for i in 0..<rows {
                let label = labels![i]
                guard label != ignore else { targetCosines[i] = 0; continue }
                var value: Float = 0
                let source = cos! + i * columns + Int(label)
                switch format {
                case .bfloat16: amm_widen_bf16(source, &value, 1)
                case .float16: amm_widen_f16(source, &value, 1)
                }
                targetCosines[i] = Double(value)
            }
        }
    }
}
