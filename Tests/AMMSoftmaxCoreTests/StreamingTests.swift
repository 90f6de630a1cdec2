import Testing
@testable import AMMSoftmaxCore

/// A gradient at least `LossKernels.streamingThreshold` bytes is written with streaming stores,
/// row by row from per-worker scratch rows while the next row runs (GradientStream). Forcing
/// either way on the same inputs must give the same bits: loss, gradient and hard-negative
/// counts, for every thread count, both element types, every variant, ignored rows, rows whose
/// gradient array starts off a 64-byte line, and shapes with partial vectors and blocks.
@Suite("Streaming gradient stores")
struct StreamingTests {
    func compare<T: LossScalar>(_: T.Type, rows: Int, columns: Int, hard: HardKind,
                                offset: Int, threads: Int, seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let cos = (0..<(rows * columns)).map { _ in T(Double.random(in: -0.6...0.6, using: &rng)) }
        var labels = (0..<rows).map { _ in Int64(Int.random(in: 0..<columns, using: &rng)) }
        labels[rows / 2] = -100
        var parameters = LossParameters(hard: hard, reduction: .none)
        parameters.numThreads = threads
        func run(streamingFrom threshold: Int) throws -> ([T], [T], [Int64]) {
            var loss = [T](repeating: .nan, count: rows)
            // `offset` elements into the array, so that rows start off a 64-byte boundary.
            var gradient = [T](repeating: .nan, count: rows * columns + offset)
            var hard = [Int64](repeating: -1, count: rows)
            try cos.withUnsafeBufferPointer { c in
                try labels.withUnsafeBufferPointer { l in
                    try loss.withUnsafeMutableBufferPointer { lo in
                        try gradient.withUnsafeMutableBufferPointer { g in
                            try hard.withUnsafeMutableBufferPointer { h in
                                try LossKernels.run(
                                    parameters: parameters, cos: c.baseAddress, rows: rows,
                                    columns: columns, labels: l.baseAddress,
                                    outputs: .init(loss: lo.baseAddress,
                                                   gradient: g.baseAddress! + offset,
                                                   hardNegatives: h.baseAddress),
                                    streamingThreshold: threshold)
                            }
                        }
                    }
                }
            }
            #expect(gradient[..<offset].allSatisfy { $0.isNaN }, "written before the array")
            return (loss, Array(gradient[offset...]), hard)
        }
        let streamed = try run(streamingFrom: 0)
        let cached = try run(streamingFrom: .max)
        let label = "\(T.self) \(rows)x\(columns) \(hard) offset \(offset) threads \(threads)"
        func bits(_ values: [T]) -> [UInt64] { values.map { Double($0).bitPattern } }
        #expect(bits(streamed.0) == bits(cached.0), "loss, \(label)")
        let sameGradient = bits(streamed.1) == bits(cached.1)
        #expect(sameGradient, "gradient, \(label)")
        #expect(streamed.2 == cached.2, "hard negatives, \(label)")
        #expect(cached.1.allSatisfy { $0.isFinite }, "every gradient element written, \(label)")
    }

    @Test(arguments: [HardKind.amm, .mvFixed, .none])
    func streamedAndCachedGradientsAreTheSame(hard: HardKind) throws {
        var seed: UInt64 = 40
        for (rows, columns) in [(9, 5000), (6, 1037), (5, 70), (3, 1)] {
            for offset in [0, 3] {
                for threads in [1, 2, 3] {
                    seed += 1
                    try compare(Float.self, rows: rows, columns: columns, hard: hard,
                                offset: offset, threads: threads, seed: seed)
                    try compare(Double.self, rows: rows, columns: columns, hard: hard,
                                offset: offset, threads: threads, seed: seed)
                }
            }
        }
    }
}
