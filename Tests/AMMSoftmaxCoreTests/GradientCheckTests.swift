import Foundation
import Testing
@testable import AMMSoftmaxCore

/// Finite-difference checks, in Double, of the gradient of every variant and reduction.
///
/// The loss is smooth except where the mining flips (c_j = f(c_y)), at theta_j = t for amm, and
/// at the arc fallback (c_y = cos(pi - m)); the inputs are drawn away from all three, by more
/// than the finite-difference step can move them.
@Suite("Finite-difference gradients (f64)")
struct GradientCheckTests {
    static let reductions = Reduction.allCases

    /// Random cosines with every entry at least `gap` from the loss's kinks.
    static func smoothInputs(_ p: LossParameters, rows: Int, classes: Int, seed: UInt64)
        -> (cos: [Double], labels: [Int64])
    {
        var rng = SeededGenerator(seed: seed)
        let reference = LiteralReference(p: p)
        let gap = 1e-3
        var cos = (0..<rows * classes).map { _ in Double.random(in: -0.97...0.97, using: &rng) }
        let labels = (0..<rows).map { _ in Int64.random(in: 0..<Int64(classes), using: &rng) }
        for i in 0..<rows {
            let y = Int(labels[i])
            while p.target == .arc, abs(cos[i * classes + y] - Foundation.cos(Double.pi - p.margin)) < gap {
                cos[i * classes + y] = Double.random(in: -0.97...0.97, using: &rng)
            }
            let f = reference.target(cos[i * classes + y]).f
            for j in 0..<classes where j != y {
                func nearKink(_ c: Double) -> Bool {
                    abs(c - f) < gap || (p.hard == .amm && abs(acos(c) - p.hardMargin) < gap)
                }
                while nearKink(cos[i * classes + j]) {
                    cos[i * classes + j] = Double.random(in: -0.97...0.97, using: &rng)
                }
            }
        }
        return (cos, labels)
    }

    @Test(arguments: allVariants.flatMap { v in reductions.map { (v.0, v.1, $0) } })
    func gradientMatchesFiniteDifferences(target: TargetKind, hard: HardKind, reduction: Reduction)
        throws
    {
        for (scale, seed) in [(8.0, 1 as UInt64), (64.0, 2)] {
            let p = LossParameters(scale: scale, margin: 0.5,
                                   hardMargin: hard == .amm ? 0.2 : 1.2,
                                   target: target, hard: hard, reduction: reduction)
            let loss = AMMSoftmaxLoss(p)
            let (rows, classes) = (5, 9)
            var (cos, labels) = Self.smoothInputs(p, rows: rows, classes: classes, seed: seed)
            labels[3] = p.ignoreIndex  // an ignored row must get exactly zero gradient
            var rng = SeededGenerator(seed: seed + 100)
            let upstream = (0..<(reduction == .none ? rows : 1)).map { _ in
                Double.random(in: 0.5...2, using: &rng)
            }
            // The scalar whose gradient backward returns: sum_k upstream_k * loss_k.
            func objective(_ x: [Double]) throws -> Double {
                zip(try loss.forward(cos: x, labels: labels, classes: classes), upstream)
                    .reduce(0) { $0 + $1.0 * $1.1 }
            }
            let analytic = try loss.backward(cos: cos, labels: labels, classes: classes,
                                             gradOutput: upstream)
            let h = 1e-6
            for k in cos.indices {
                var plus = cos, minus = cos
                plus[k] += h
                minus[k] -= h
                let numeric = (try objective(plus) - objective(minus)) / (2 * h)
                #expect(close(analytic[k], numeric, rtol: 1e-5, atol: 1e-7),
                        "s=\(scale) entry \(k) (row \(k / classes), column \(k % classes)): analytic \(analytic[k]), numeric \(numeric)")
            }
            for j in 0..<classes { #expect(analytic[3 * classes + j] == 0) }
        }
    }

    /// The arc target near cos = +-1, where the 1e-7 floor on sin(theta) decides df/dc: the
    /// derivative is large but finite and still matches finite differences just inside.
    @Test func arcTargetDerivativeNearOne() throws {
        let p = LossParameters(scale: 2, margin: 0.5, target: .arc, hard: .none, reduction: .sum)
        let loss = AMMSoftmaxLoss(p)
        for cy in [0.999, 0.99999, -0.87] {
            let cos = [cy, 0.1, -0.3]
            let g = try loss.backward(cos: cos, labels: [0], classes: 3, gradOutput: [1])
            let h = 1e-3 * (1 - abs(cy))  // relative to the distance from the end point
            let numeric = (try loss.forward(cos: [cy + h, 0.1, -0.3], labels: [0], classes: 3)[0]
                - loss.forward(cos: [cy - h, 0.1, -0.3], labels: [0], classes: 3)[0]) / (2 * h)
            #expect(close(g[0], numeric, rtol: 1e-4, atol: 1e-9), "cy=\(cy): \(g[0]) vs \(numeric)")
        }
    }
}
