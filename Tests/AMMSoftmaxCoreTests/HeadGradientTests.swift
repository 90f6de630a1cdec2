import Foundation
import Testing
@testable import AMMSoftmaxCore
@testable import AMMSoftmaxHead

/// The fused head in f64: finite differences of its loss against its gradients with respect to
/// the embeddings and the weights, and agreement with the cosine path on cos = x^ W^^T.
@Suite("Fused head (f64)")
struct HeadGradientTests {
    struct Problem {
        var x: [Double], w: [Double], labels: [Int64]
        let n: Int, d: Int, c: Int
    }

    /// Random embeddings and weights of varied norms, drawn until no cosine is within `gap` of a
    /// kink of the loss (mining threshold, theta = t, the arc fallback).
    static func problem(_ p: LossParameters, n: Int, d: Int, c: Int, seed: UInt64) -> Problem {
        var rng = SeededGenerator(seed: seed)
        let reference = LiteralReference(p: p)
        while true {
            let x = (0..<n * d).map { _ in Double.random(in: -2...2, using: &rng) }
            let w = (0..<c * d).map { _ in Double.random(in: -2...2, using: &rng) }
            let labels = (0..<n).map { _ in Int64.random(in: 0..<Int64(c), using: &rng) }
            let cos = cosines(x: x, w: w, n: n, d: d, c: c)
            var smooth = true
            for i in 0..<n {
                let y = Int(labels[i])
                let cy = cos[i * c + y]
                if abs(cy - Foundation.cos(Double.pi - p.margin)) < 1e-3 { smooth = false }
                let f = reference.target(cy).f
                for j in 0..<c where j != y {
                    let cj = cos[i * c + j]
                    if abs(cj - f) < 1e-3 || abs(acos(cj) - p.hardMargin) < 1e-3 { smooth = false }
                }
            }
            if smooth { return Problem(x: x, w: w, labels: labels, n: n, d: d, c: c) }
        }
    }

    static func cosines(x: [Double], w: [Double], n: Int, d: Int, c: Int) -> [Double] {
        func unit(_ v: ArraySlice<Double>) -> [Double] {
            let r = max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
            return v.map { $0 / r }
        }
        let xs = (0..<n).map { unit(x[$0 * d..<($0 + 1) * d]) }
        let ws = (0..<c).map { unit(w[$0 * d..<($0 + 1) * d]) }
        return (0..<n).flatMap { i in (0..<c).map { j in zip(xs[i], ws[j]).reduce(0) { $0 + $1.0 * $1.1 } } }
    }

    static func run(_ p: LossParameters, _ q: Problem, blockSize: Int = 0,
                    keepBudget: Int = HeadKernel.keepBudget)
        throws -> (loss: Double, dx: [Double], dw: [Double])
    {
        var loss = [Double](repeating: 0, count: p.reduction == .none ? q.n : 1)
        var dx = [Double](repeating: 0, count: q.n * q.d)
        var dw = [Double](repeating: 0, count: q.c * q.d)
        try q.x.withUnsafeBufferPointer { x in
            try q.w.withUnsafeBufferPointer { w in
                try q.labels.withUnsafeBufferPointer { l in
                    try HeadKernel.run(parameters: p, blockSize: blockSize, embeddings: x.baseAddress,
                                       weights: w.baseAddress, rows: q.n, dimension: q.d,
                                       classes: q.c, labels: l.baseAddress,
                                       loss: &loss, gradEmbeddings: &dx, gradWeights: &dw,
                                       keepBudget: keepBudget)
                }
            }
        }
        return (loss.reduce(0, +), dx, dw)
    }

    @Test(arguments: allVariants)
    func gradientsMatchFiniteDifferences(target: TargetKind, hard: HardKind) throws {
        let p = LossParameters(scale: 4, margin: 0.5, hardMargin: hard == .amm ? 0.2 : 1.2,
                               target: target, hard: hard, reduction: .sum)
        var q = Self.problem(p, n: 3, d: 4, c: 5, seed: 11)
        q.labels[1] = p.ignoreIndex
        let (_, dx, dw) = try Self.run(p, q, blockSize: 2)
        /// Central differences of the loss along one input entry.
        func numeric(_ entry: WritableKeyPath<Problem, [Double]>, _ k: Int) throws -> Double {
            let h = 1e-6
            var plus = q, minus = q
            plus[keyPath: entry][k] += h
            minus[keyPath: entry][k] -= h
            return (try Self.run(p, plus).loss - Self.run(p, minus).loss) / (2 * h)
        }
        for (name, entry, analytic) in [("dx", \Problem.x, dx), ("dw", \Problem.w, dw)] {
            for k in analytic.indices {
                let n = try numeric(entry, k)
                #expect(close(analytic[k], n, rtol: 1e-5, atol: 1e-7),
                        "\(name)[\(k)]: \(analytic[k]) vs \(n)")
            }
        }
        #expect(dx[4..<8].allSatisfy { $0 == 0 }, "the ignored row has no gradient")
    }

    /// The head's loss is the cosine path's loss on x^ W^^T, for every block size.
    @Test func agreesWithTheCosinePath() throws {
        let p = LossParameters(reduction: .mean)
        let q = Self.problem(p, n: 6, d: 5, c: 37, seed: 5)
        let cos = Self.cosines(x: q.x, w: q.w, n: q.n, d: q.d, c: q.c)
        let expected = try AMMSoftmaxLoss(p).forward(cos: cos, labels: q.labels, classes: q.c)[0]
        for block in [0, 1, 7, 16, 37, 100] {
            let got = try Self.run(p, q, blockSize: block).loss
            #expect(close(got, expected, rtol: 1e-12, atol: 0), "block \(block): \(got) vs \(expected)")
        }
    }

    /// The second pass takes a block's cosines kept from the first pass, or computes them again
    /// once the keep budget is spent: the same bits either way (the automatic budget keeps
    /// everything in the other tests; here none, some, and all of the blocks are kept).
    @Test(arguments: [HardKind.amm, .none])
    func keptAndRecomputedCosinesGiveTheSameBits(hard: HardKind) throws {
        let p = LossParameters(scale: 16, hard: hard, reduction: .mean)
        let q = Self.problem(p, n: 5, d: 6, c: 41, seed: 23)
        let block = 8  // 6 blocks, the last of 1 class
        let perBlock = q.n * block * MemoryLayout<Double>.stride
        #expect(HeadKernel.keptBlocks(Double.self, rows: q.n, blockSize: block, blocks: 6,
                                      budget: 3 * perBlock + 1) == 3)
        let all = try Self.run(p, q, blockSize: block, keepBudget: Int.max / 2)
        for budget in [0, perBlock - 1, 3 * perBlock, 5 * perBlock] {
            let got = try Self.run(p, q, blockSize: block, keepBudget: budget)
            #expect(got.loss.bitPattern == all.loss.bitPattern, "budget \(budget): loss")
            #expect(got.dx.map(\.bitPattern) == all.dx.map(\.bitPattern), "budget \(budget): dx")
            #expect(got.dw.map(\.bitPattern) == all.dw.map(\.bitPattern), "budget \(budget): dw")
        }
    }

    /// The same at a size where the kept cosines (5 MiB) and the block buffers are mapped
    /// memory (LargeBuffer takes 4 MiB and up from mmap), with ignored rows and the automatic
    /// block: keeping all, some, or none of the blocks gives the same bits.
    @Test func keptCosinesInMappedMemory() throws {
        let (n, d, c) = (32, 4, 20_000)
        var rng = SeededGenerator(seed: 3)
        let x = (0..<n * d).map { _ in Double.random(in: -1...1, using: &rng) }
        let w = (0..<c * d).map { _ in Double.random(in: -1...1, using: &rng) }
        var labels = (0..<n).map { _ in Int64.random(in: 0..<Int64(c), using: &rng) }
        labels[5] = -100
        let q = Problem(x: x, w: w, labels: labels, n: n, d: d, c: c)
        let p = LossParameters(scale: 32, reduction: .sum)
        let b = HeadKernel.blockSize(Double.self, rows: n, dimension: d, classes: c, requested: 0)
        let perBlock = n * b * MemoryLayout<Double>.stride
        #expect(n * c * MemoryLayout<Double>.stride >= 4 << 20)
        let all = try Self.run(p, q)
        for budget in [0, perBlock] {
            let got = try Self.run(p, q, keepBudget: budget)
            #expect(got.loss.bitPattern == all.loss.bitPattern, "budget \(budget): loss")
            #expect(got.dx.map(\.bitPattern) == all.dx.map(\.bitPattern)
                    && got.dw.map(\.bitPattern) == all.dw.map(\.bitPattern),
                    "budget \(budget): gradients")
        }
        #expect(all.loss.isFinite && all.dw.contains { $0 != 0 })
    }
}
