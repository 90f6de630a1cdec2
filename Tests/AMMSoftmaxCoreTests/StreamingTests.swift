import Testing
@testable import AMMSoftmaxCore
import AMMSoftmaxKernels

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

    /// The test's own conversions (the library's are in CVectorMath): the standard library's
    /// Float16 for f16, the bit pattern for bf16.
    static func widen(_ h: UInt16, _ format: HalfPrecisionLoss.Format) -> Float {
        format == .float16 ? Float(Float16(bitPattern: h)) : Float(bitPattern: UInt32(h) << 16)
    }

    static func narrow(_ x: Float, _ format: HalfPrecisionLoss.Format) -> UInt16 {
        if format == .float16 { return Float16(x).bitPattern }
        let u = x.bitPattern
        return UInt16((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)  // finite values only here
    }

    /// 16-bit storage through the same pass: streamed from 16-bit scratch rows or written in
    /// place, the same bits, and those of the Float path on the widened values with each
    /// gradient entry rounded once (rows off 64-byte lines by 6 bytes too: 16-bit rows start
    /// at any even address).
    @Test(arguments: [HalfPrecisionLoss.Format.bfloat16, .float16])
    func halfStorageStreamedAndInPlaceAreTheFloatPathRounded(
        format: HalfPrecisionLoss.Format
    ) throws {
        var seed: UInt64 = 90
        for (rows, columns) in [(7, 5001), (6, 1037), (5, 70), (3, 1)] {
            for offset in [0, 3] {
                for threads in [1, 2, 3] {
                    seed += 1
                    var rng = SeededGenerator(seed: seed)
                    let stored = (0..<(rows * columns)).map { _ in
                        Self.narrow(Float.random(in: -0.7...0.7, using: &rng), format)
                    }
                    var labels = (0..<rows).map { _ in
                        Int64(Int.random(in: 0..<columns, using: &rng))
                    }
                    labels[rows / 2] = -100
                    var parameters = LossParameters(hard: .curricular, reduction: .none)
                    parameters.hardMargin = 0.2
                    parameters.numThreads = threads
                    func run(streamingFrom threshold: Int) throws -> ([Float], [UInt16]) {
                        var loss = [Float](repeating: .nan, count: rows)
                        var gradient = [UInt16](repeating: 0x7fc0, count: rows * columns + offset)
                        try stored.withUnsafeBufferPointer { c in
                            try labels.withUnsafeBufferPointer { l in
                                try loss.withUnsafeMutableBufferPointer { lo in
                                    try gradient.withUnsafeMutableBufferPointer { g in
                                        try HalfPrecisionLoss.run(
                                            parameters: parameters, format: format,
                                            cos: c.baseAddress, rows: rows, columns: columns,
                                            labels: l.baseAddress,
                                            outputs: .init(loss: lo.baseAddress),
                                            gradient: g.baseAddress! + offset,
                                            streamingThreshold: threshold)
                                    }
                                }
                            }
                        }
                        #expect(gradient[..<offset].allSatisfy { $0 == 0x7fc0 },
                                "written before the array")
                        return (loss, Array(gradient[offset...]))
                    }
                    let streamed = try run(streamingFrom: 0)
                    let inPlace = try run(streamingFrom: .max)
                    let widened = stored.map { Self.widen($0, format) }
                    var loss32 = [Float](repeating: .nan, count: rows)
                    var gradient32 = [Float](repeating: .nan, count: rows * columns)
                    try LossKernels.run(parameters: parameters, cos: widened, rows: rows,
                                        columns: columns, labels: labels,
                                        outputs: .init(loss: &loss32, gradient: &gradient32))
                    let label = "\(format) \(rows)x\(columns) offset \(offset) threads \(threads)"
                    #expect(streamed.0.map(\.bitPattern) == loss32.map(\.bitPattern),
                            "loss, \(label)")
                    #expect(inPlace.0.map(\.bitPattern) == loss32.map(\.bitPattern),
                            "loss, \(label)")
                    let rounded = gradient32.map { Self.narrow($0, format) }
                    #expect(streamed.1 == rounded, "streamed gradient, \(label)")
                    #expect(inPlace.1 == rounded, "gradient in place, \(label)")
                }
            }
        }
    }

    /// A piece (what goes out after a block taken in two steps) is a block's worth of the
    /// stream's elements, whatever their size.
    @Test func streamPiecesAreABlocksWorthOfElements() {
        func piece<E: BitwiseCopyable>(_: E.Type) -> Int {
            let source = UnsafeMutablePointer<E>.allocate(capacity: 64)
            let destination = UnsafeMutablePointer<E>.allocate(capacity: 64)
            defer { source.deallocate(); destination.deallocate() }
            UnsafeMutableRawPointer(source).initializeMemory(as: UInt8.self, repeating: 0,
                                                             count: 64 * MemoryLayout<E>.stride)
            return GradientStream(from: source, to: destination, count: 64).pieceBytes
        }
        let block = RowKernel<Float>.blockSize
        #expect(piece(Float.self) == 4 * block)
        #expect(piece(Double.self) == 8 * block)
        #expect(piece(UInt16.self) == 2 * block)
    }
}
