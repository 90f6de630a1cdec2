import Testing
@testable import AMMSoftmaxCore
@testable import AMMSoftmaxKernels

/// RowAccumulator takes a block either by a first loop that assumes easy negatives and a
/// second over the vectors holding a hard one, or, after a block where most vectors held one,
/// by the mining arithmetic over every vector (`_dense`). Both must give the same bits: the
/// reference, the sum, and the weighted exponentials left for the gradient.
@Suite("Row accumulator")
struct RowAccumulatorTests {
    func compare<T: LossScalar>(_: T.Type, hard: HardKind, seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        let count = 1000  // a partial last vector for both widths
        for round in 0..<40 {
            // From all easy to all hard, some blocks holding the target.
            let spread = Double(round % 10) / 10
            let cosines = (0..<count).map { _ in T(Double.random(in: -spread...spread,
                                                                 using: &rng)) }
            let target = round % 3 == 0 ? round * 7 % count : -1
            let targetLogit = TargetLogit(cosine: Double.random(in: -0.5...0.9, using: &rng),
                                          kind: .arc, margin: 0.5)
            let negatives = NegativeLogit<T>(kind: hard, hardMargin: hard == .amm ? 0.2 : 1.2,
                                             target: targetLogit)
            for withSlopes in [false, true] {
                var results: [(T, Double, [T])] = []
                for dense in [false, true] {
                    var accumulator = RowAccumulator(negatives: negatives, scale: T(32))
                    accumulator._dense = dense
                    var buffer = [T](repeating: 0, count: count)
                    var slopes = [T](repeating: 0, count: RowKernel<T>.blockSize)
                    let reference = cosines.withUnsafeBufferPointer { c in
                        buffer.withUnsafeMutableBufferPointer { b in
                            slopes.withUnsafeMutableBufferPointer { s in
                                accumulator.add(c.baseAddress!, count: count, target: target,
                                                into: b.baseAddress!,
                                                slopes: withSlopes ? s.baseAddress! : nil)
                            }
                        }
                    }
                    results.append((reference, accumulator.sum, withSlopes ? buffer : []))
                }
                #expect(results[0].0 == results[1].0, "reference, round \(round)")
                #expect(results[0].1.bitPattern == results[1].1.bitPattern, "sum, round \(round)")
                #expect(results[0].2 == results[1].2, "weighted exponentials, round \(round)")
            }
        }
    }

    @Test(arguments: [HardKind.amm, .mvFixed, .mvAdaptive])
    func denseAndListedBlocksGiveTheSameBits(hard: HardKind) {
        compare(Float.self, hard: hard, seed: 5)
        compare(Double.self, hard: hard, seed: 6)
    }
}
