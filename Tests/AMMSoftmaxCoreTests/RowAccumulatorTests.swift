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

    /// `addStretch` (one pass, CVectorMath) against the formula with the same reference: each
    /// stored e_j dg/dc_j is, bit for bit, exp(s g(c_j) - r) dg/dc_j computed vector by vector
    /// with the Swift functions (so the loop's pipelining, its skipping of the mining for groups
    /// without a hard lane, and its tail give the same numbers), and the sum agrees with a plain
    /// Double sum of the same exponentials to rounding. Stretches of several blocks, all easy
    /// to all hard, with a partial last vector.
    func checkStretch<T: LossScalar>(_: T.Type, hard: HardKind, seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        let width = T.Vector.scalarCount
        for round in 0..<24 {
            let count = [2500, 3 * RowKernel<T>.blockSize, 70, 4 * width - 1][round % 4]
            let spread = Double(round % 6) / 5
            // Runs of easy and hard groups: a threshold near 0 and cosines of one sign per run.
            var cosines = [T]()
            while cosines.count < count {
                let sign = Bool.random(using: &rng) ? 1.0 : -1.0
                for _ in 0..<(width * Int.random(in: 1...12, using: &rng)) {
                    cosines.append(T(sign * Double.random(in: 0...spread, using: &rng)))
                }
            }
            cosines.removeLast(cosines.count - count)
            let targetLogit = TargetLogit(cosine: round % 2 == 0 ? 0.6 : 0.2, kind: .arc,
                                          margin: 0.5)
            let negatives = NegativeLogit<T>(kind: hard, hardMargin: hard == .amm ? 0.2 : 1.2,
                                             target: targetLogit)
            let scale = T(32)
            // A reference below the stretch's largest logit, within the headroom.
            var largest = -T.infinity
            for start in stride(from: 0, to: count, by: width) {
                var c = T.Vector(repeating: 0)
                for k in 0..<Swift.min(width, count - start) { c[k] = cosines[start + k] }
                let z = negatives.values(c) * scale
                for k in 0..<Swift.min(width, count - start) { largest = Swift.max(largest, z[k]) }
            }
            let r = (largest - 10).rounded(.down)
            for weighted in [false, true] {
                var accumulator = RowAccumulator(negatives: negatives, scale: scale)
                accumulator._reference = r  // as if an earlier block had set it
                var out = [T](repeating: .nan, count: count)
                let reference = cosines.withUnsafeBufferPointer { c in
                    out.withUnsafeMutableBufferPointer { o in
                        accumulator.addStretch(c.baseAddress!, count: count,
                                               weighted: weighted ? o.baseAddress! : nil)
                    }
                }
                #expect(reference == r, "round \(round)")
                var expectedSum = 0.0
                for start in stride(from: 0, to: count, by: width) {
                    var c = T.Vector(repeating: 0)
                    let n = Swift.min(width, count - start)
                    for k in 0..<n { c[k] = cosines[start + k] }
                    let (g, dg) = negatives.valuesAndDerivatives(c)
                    let e = T.vectorExp(g * scale - T.Vector(repeating: r))
                    for k in 0..<n {
                        expectedSum += Double(e[k])
                        if weighted {
                            #expect((e * dg)[k] == out[start + k],
                                    "round \(round), column \(start + k)")
                        }
                    }
                }
                #expect(abs(accumulator._sum * Double.exp(Double(accumulator.reference) - Double(r))
                            - expectedSum) <= 1e-6 * expectedSum, "sum, round \(round)")
                #expect(accumulator.reference == largest, "round \(round)")
                #expect(accumulator.allFinite)
            }
        }
    }

    @Test(arguments: [HardKind.amm, .mvFixed, .mvAdaptive, .none])
    func stretchMatchesTheFormula(hard: HardKind) {
        checkStretch(Float.self, hard: hard, seed: 7)
        checkStretch(Double.self, hard: hard, seed: 8)
    }

    /// A stretch whose largest logit is more than `headroom` above the reference is refused,
    /// leaving the accumulator as it was; a NaN among its cosines is reported.
    @Test func stretchRefusalAndNaN() {
        let negatives = NegativeLogit<Float>(
            kind: .amm, hardMargin: 0.2,
            target: TargetLogit(cosine: 0.5, kind: .arc, margin: 0.5))
        var cosines = [Float](repeating: -0.5, count: 3000)
        cosines[2100] = 0.9  // z = 57.6 with s = 64, against a reference of -40
        var accumulator = RowAccumulator(negatives: negatives, scale: 64)
        accumulator._reference = -40
        accumulator._sum = 1
        let refused = accumulator.addStretch(cosines, count: cosines.count, weighted: nil)
        #expect(refused == nil && accumulator.reference == -40 && accumulator.sum == 1)
        cosines[2100] = .nan
        #expect(accumulator.addStretch(cosines, count: cosines.count, weighted: nil) == -40)
        #expect(!accumulator.allFinite)
    }
}
