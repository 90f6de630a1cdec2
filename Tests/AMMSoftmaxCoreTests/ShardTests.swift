import Foundation
import Testing
@testable import AMMSoftmaxCore
@testable import AMMSoftmaxHead

/// The sharded phases, run for every shard of a split in one process, their results combined as
/// the collectives would (sum, max, rescale, sum), against the unsharded kernels: bit for bit
/// with one shard (the head), within rounding of the sums' order otherwise.
@Suite("Sharding by class")
struct ShardTests {
    static let variants: [LossParameters] = [
        LossParameters(),
        LossParameters(scale: 30, margin: 0.35, target: .cos, hard: .none),
        LossParameters(hardMargin: 1.2, hard: .mvFixed, reduction: .sum),
        LossParameters(hardMargin: 0.3, hard: .mvAdaptive, reduction: .none),
    ]

    /// The combined phases 1 and 2 over `shards`: target cosines, and the global statistics.
    static func combine(rows n: Int, shards: [ClassShard],
                        target: (ClassShard, UnsafeMutablePointer<Double>) throws -> Void,
                        statistics: (ClassShard, UnsafePointer<Double>,
                                     UnsafeMutablePointer<Double>,
                                     UnsafeMutablePointer<Double>) throws -> Void)
        rethrows -> (target: [Double], max: [Double], sum: [Double])
    {
        var targets = [Double](repeating: 0, count: n)
        for shard in shards {
            var part = [Double](repeating: .nan, count: n)
            try target(shard, &part)
            for i in 0..<n { targets[i] += part[i] }
        }
        var maxima: [[Double]] = [], sums: [[Double]] = []
        for shard in shards {
            var m = [Double](repeating: .nan, count: n), s = m
            try statistics(shard, targets, &m, &s)
            maxima.append(m)
            sums.append(s)
        }
        let globalMax = (0..<n).map { i in maxima.map { $0[i] }.max()! }
        var globalSum = [Double](repeating: 0, count: n)
        for (m, s) in zip(maxima, sums) {
            var s = s
            ShardKernels.rescaleSums(rows: n, rowMax: m, globalMax: globalMax, rowSum: &s)
            for i in 0..<n { globalSum[i] += s[i] }
        }
        return (targets, globalMax, globalSum)
    }

    static func splits(_ c: Int) -> [[ClassShard]] {
        [1, 2, 3, 5].map { p in (0..<p).map { ClassShard.partialFC(total: c, rank: $0, size: p) } }
    }

    @Test(arguments: 0..<4)
    func cosineShardsMatchTheUnshardedLoss(variant: Int) throws {
        let p = Self.variants[variant]
        let (n, c) = (23, 4)  // 5 shards of 4 classes: one holds none
        for c in [c, 97] {
            var rng = SeededGenerator(seed: UInt64(31 * variant + c))
            let cos = (0..<n * c).map { _ in Double.random(in: -1...1, using: &rng) }
            var labels = (0..<n).map { _ in Int64.random(in: 0..<Int64(c), using: &rng) }
            labels[2] = p.ignoreIndex
            let whole = try AMMSoftmaxLoss(p).forwardBackward(cos: cos, labels: labels, classes: c)
            for shards in Self.splits(c) {
                let columns = shards.map { s in
                    (0..<n).flatMap { i in cos[(i * c + s.start)..<(i * c + s.start + s.count)] }
                }
                let stats = try Self.combine(rows: n, shards: shards, target: { s, out in
                    let k = shards.firstIndex(of: s)!
                    try ShardKernels.targets(parameters: p, cos: columns[k], rows: n, shard: s,
                                             labels: labels, into: out)
                }, statistics: { s, t, m, sum in
                    let k = shards.firstIndex(of: s)!
                    try ShardKernels.statistics(parameters: p, cos: columns[k], rows: n,
                                                shard: s, labels: labels, targetCosines: t,
                                                rowMax: m, rowSum: sum)
                })
                var gradient = [Double](repeating: .nan, count: n * c)
                for (k, s) in shards.enumerated() {
                    var loss = [Double](repeating: .nan, count: p.reduction == .none ? n : 1)
                    var part = [Double](repeating: .nan, count: n * s.count)
                    try ShardKernels.gradient(
                        parameters: p, cos: columns[k], rows: n, shard: s, labels: labels,
                        targetCosines: stats.target, globalMax: stats.max,
                        globalSum: stats.sum, upstream: nil, loss: &loss, gradient: &part)
                    for (a, b) in zip(loss, whole.loss) {
                        #expect(abs(a - b) <= 1e-12 * max(1, abs(b)), "loss, \(shards.count) shards")
                    }
                    for i in 0..<n {
                        for j in 0..<s.count { gradient[i * c + s.start + j] = part[i * s.count + j] }
                    }
                }
                let scale = whole.gradient.map(abs).max()!
                let worst = zip(gradient, whole.gradient).map { abs($0 - $1) }.max()!
                #expect(worst <= 1e-12 * scale, "gradient, \(shards.count) shards: \(worst)")
            }
        }
    }

    @Test(arguments: 0..<4)
    func headShardsMatchTheUnshardedHead(variant: Int) throws {
        let p = Self.variants[variant]
        let (n, d, c) = (19, 8, 41)
        var rng = SeededGenerator(seed: UInt64(7 + variant))
        let x = (0..<n * d).map { _ in Double.random(in: -2...2, using: &rng) }
        let w = (0..<c * d).map { _ in Double.random(in: -2...2, using: &rng) }
        var labels = (0..<n).map { _ in Int64.random(in: 0..<Int64(c), using: &rng) }
        labels[4] = p.ignoreIndex
        let whole = try HeadGradientTests.run(
            p, .init(x: x, w: w, labels: labels, n: n, d: d, c: c), blockSize: 16)
        for shards in Self.splits(c) {
            let weights = shards.map { Array(w[($0.start * d)..<(($0.start + $0.count) * d)]) }
            func run<R>(_ s: ClassShard, _ body: (UnsafePointer<Double>?) throws -> R) rethrows -> R {
                try weights[shards.firstIndex(of: s)!].withUnsafeBufferPointer {
                    try body($0.baseAddress)
                }
            }
            let stats = try Self.combine(rows: n, shards: shards, target: { s, out in
                try run(s) { ws in
                    try ShardHeadKernel.targets(parameters: p, embeddings: x, weights: ws,
                                                rows: n, dimension: d, shard: s, labels: labels,
                                                into: out)
                }
            }, statistics: { s, t, m, sum in
                try run(s) { ws in
                    try ShardHeadKernel.statistics(
                        parameters: p, blockSize: 16, embeddings: x, weights: ws, rows: n,
                        dimension: d, shard: s, labels: labels, targetCosines: t, rowMax: m,
                        rowSum: sum)
                }
            })
            var dx = [Double](repeating: 0, count: n * d), dw: [Double] = []
            var loss = [Double](repeating: .nan, count: p.reduction == .none ? n : 1)
            for s in shards {
                var partX = [Double](repeating: .nan, count: n * d)
                var partW = [Double](repeating: .nan, count: s.count * d)
                try run(s) { ws in
                    try ShardHeadKernel.gradient(
                        parameters: p, blockSize: 16, embeddings: x, weights: ws, rows: n,
                        dimension: d, shard: s, labels: labels, targetCosines: stats.target,
                        globalMax: stats.max, globalSum: stats.sum, loss: &loss,
                        gradEmbeddings: &partX, gradWeights: &partW)
                }
                for k in 0..<n * d { dx[k] += partX[k] }
                dw += partW
            }
            let total = loss.reduce(0, +)  // as HeadGradientTests.run reports it
            if shards.count == 1 {  // one shard: the unsharded head's very operations
                #expect(total == whole.loss && dx == whole.dx && dw == whole.dw)
            }
            #expect(abs(total - whole.loss) <= 1e-12 * max(1, abs(whole.loss)))
            for (name, a, b) in [("dx", dx, whole.dx), ("dw", dw, whole.dw)] {
                let worst = zip(a, b).map { abs($0 - $1) }.max()!
                #expect(worst <= 1e-12 * b.map(abs).max()!, "\(name), \(shards.count) shards")
            }
        }
    }

    /// A shard without classes, with a block size asked for (it once divided by zero).
    @Test func headShardWithoutClassesAndABlockSize() throws {
        let p = LossParameters()
        let x = [Double](repeating: 1, count: 3 * 4), labels: [Int64] = [0, 1, 2]
        let targets = [Double](repeating: 0.5, count: 3)
        var m = [Double](repeating: .nan, count: 3), s = m
        let empty = ClassShard(start: 5, count: 0, total: 5)
        try ShardHeadKernel.statistics(parameters: p, blockSize: 8, embeddings: x, weights: nil,
                                       rows: 3, dimension: 4, shard: empty, labels: labels,
                                       targetCosines: targets, rowMax: &m, rowSum: &s)
        #expect(m == [-.infinity, -.infinity, -.infinity] && s == [0, 0, 0])
        var loss = [Double](repeating: .nan, count: 1), dx = x
        try ShardHeadKernel.gradient(parameters: p, blockSize: 8, embeddings: x, weights: nil,
                                     rows: 3, dimension: 4, shard: empty, labels: labels,
                                     targetCosines: targets, globalMax: [0, 0, 0],
                                     globalSum: [1, 1, 1], loss: &loss, gradEmbeddings: &dx,
                                     gradWeights: nil)
        #expect(dx.allSatisfy { $0 == 0 } && loss[0].isFinite)
    }

    @Test func shardValidationNamesTheField() {
        #expect(throws: LossError.self) { try ClassShard(start: 0, count: 1, total: 0).validate() }
        #expect(throws: LossError.shape("class_start = 3 is invalid: must be in [0, 2] so that "
            + "the shard [class_start, class_start + c_local) lies in [0, c_total = 5)")) {
            try ClassShard(start: 3, count: 3, total: 5).validate()
        }
        #expect(throws: LossError.shape("c_local = -1 is invalid: must be >= 0")) {
            try ClassShard(start: 0, count: -1, total: 5).validate()
        }
        for (total, size) in [(10, 3), (2, 5), (7, 1)] {
            let shards = (0..<size).map { ClassShard.partialFC(total: total, rank: $0, size: size) }
            #expect(shards.map(\.count).reduce(0, +) == total)
            #expect(zip(shards, shards.dropFirst()).allSatisfy { $0.start + $0.count == $1.start })
            #expect(shards.map(\.count) == shards.map(\.count).sorted(by: >))
        }
    }
}
