import Foundation
import Testing
@testable import AMMSoftmaxCore

/// The kernels against the literal transcription of docs/FORMULATION.md, on random and adversarial
/// matrices, in f64 (tight) and f32 (against the f64 literal reference on the same values).
@Suite("Kernels vs the literal formulation")
struct KernelReferenceTests {
    /// A matrix mixing random rows with the adversarial ones: cos = +-1, values just outside
    /// [-1, 1], the arc fallback boundary, theta_j near t, every or no negative hard, ignored rows.
    static func mixedInputs(_ p: LossParameters, classes: Int, seed: UInt64)
        -> (cos: [Double], labels: [Int64], rows: Int)
    {
        var rng = SeededGenerator(seed: seed)
        var rows: [[Double]] = []
        var labels: [Int64] = []
        func random() -> [Double] { (0..<classes).map { _ in Double.random(in: -1...1, using: &rng) } }
        for _ in 0..<6 { rows.append(random()); labels.append(Int64.random(in: 0..<Int64(classes), using: &rng)) }
        var r = random(); r[0] = 1; r[1] = -1; r[2] = 1; rows.append(r); labels.append(0)   // target at +1
        r = random(); r[0] = -1; r[1] = 1; rows.append(r); labels.append(0)               // target at -1
        r = random(); r[1] = 1.0000001; r[2] = -1.0000001; rows.append(r); labels.append(1) // outside [-1, 1]
        let boundary = Foundation.cos(Double.pi - p.margin)
        for cy in [boundary, boundary.nextUp, boundary.nextDown, boundary + 1e-9, boundary - 1e-9] {
            r = random(); r[0] = cy; rows.append(r); labels.append(0)
        }
        let cosT = Foundation.cos(p.hardMargin)
        r = (0..<classes).map { j in j == 0 ? -0.99 : (j % 2 == 0 ? cosT + 1e-6 : cosT - 1e-6) }
        rows.append(r); labels.append(0)                                                   // theta_j around t, all hard
        r = (0..<classes).map { j in j == 0 ? -0.9 : 0.5 + 0.4 * Double(j) / Double(classes) }
        rows.append(r); labels.append(0)                                                   // every negative hard
        r = (0..<classes).map { j in j == 0 ? 0.99 : -0.9 + 0.1 * Double(j) / Double(classes) }
        rows.append(r); labels.append(0)                                                   // no negative hard
        rows.append(random()); labels.append(p.ignoreIndex)                                // ignored
        return (rows.flatMap { $0 }, labels, rows.count)
    }

    @Test(arguments: allVariants.flatMap { v in Reduction.allCases.map { (v.0, v.1, $0) } })
    func doubleMatchesLiteralReference(target: TargetKind, hard: HardKind, reduction: Reduction) throws {
        let settings = [(64.0, 0.5, 0.2), (30.0, 0.35, 1.2), (1.0, 2.9, 0.0), (64.0, 0.0, 0.5),
                        (8.0, 0.5, 3.5)]
        for (scale, margin, t, marginGradient) in settings.flatMap({ v in
            MarginGradient.allCases.map { (v.0, v.1, v.2, $0) }
        }) {
            let p = LossParameters(scale: scale, margin: margin, hardMargin: t,
                                   target: target, hard: hard, reduction: reduction,
                                   marginGradient: marginGradient)
            let classes = 13
            let (cos, labels, _) = Self.mixedInputs(p, classes: classes, seed: 7)
            let expected = LiteralReference(p: p).forwardBackward(cos: cos, labels: labels, classes: classes)
            let got = try AMMSoftmaxLoss(p).forwardBackward(cos: cos, labels: labels, classes: classes)
            let gmax = expected.gradient.map(abs).max()!
            if let bad = firstMismatch(got.loss, expected.loss, rtol: 1e-12, atol: 1e-12) {
                Issue.record("loss, s=\(scale) m=\(margin) t=\(t): \(bad)")
            }
            if let bad = firstMismatch(got.gradient, expected.gradient, rtol: 1e-9, atol: 1e-13 * gmax) {
                Issue.record("gradient, s=\(scale) m=\(margin) t=\(t): \(bad)")
            }
        }
    }

    @Test(arguments: allVariants)
    func floatMatchesLiteralReferenceWithinTolerance(target: TargetKind, hard: HardKind) throws {
        // f32 elementwise arithmetic: z = s g carries ~s * 2^-24 of rounding, so the loss is
        // within ~1e-6 * s absolute and the gradient within ~2e-6 * max|grad| of the f64 values.
        let p = LossParameters(scale: 64, target: target, hard: hard, reduction: .sum)
        let classes = 29
        let (cos64, labels, _) = Self.mixedInputs(p, classes: classes, seed: 11)
        let cos32 = cos64.map { Float($0) }
        let expected = LiteralReference(p: p)
            .forwardBackward(cos: cos32.map { Double($0) }, labels: labels, classes: classes)
        let got = try AMMSoftmaxLoss(p).forwardBackward(cos: cos32, labels: labels, classes: classes)
        let gmax = expected.gradient.map(abs).max()!
        if let bad = firstMismatch(got.loss.map { Double($0) }, expected.loss, rtol: 1e-6, atol: 64 * 1e-6) {
            Issue.record("loss: \(bad)")
        }
        if let bad = firstMismatch(got.gradient.map { Double($0) }, expected.gradient, rtol: 1e-4, atol: 2e-6 * gmax) {
            Issue.record("gradient: \(bad)")
        }
    }

    @Test(arguments: [1, 2, 3, 5])
    func resultsAreBitwiseIdenticalForEveryThreadCount(threads: Int) throws {
        let (rows, classes) = (103, 257)
        var rng = SeededGenerator(seed: 3)
        let cos = (0..<rows * classes).map { _ in Float.random(in: -1...1, using: &rng) }
        let labels = (0..<rows).map { _ in Int64.random(in: 0..<Int64(classes), using: &rng) }
        for reduction in Reduction.allCases {
            let single = try AMMSoftmaxLoss(LossParameters(reduction: reduction, numThreads: 1))
                .forwardBackward(cos: cos, labels: labels, classes: classes)
            let many = try AMMSoftmaxLoss(LossParameters(reduction: reduction, numThreads: threads))
                .forwardBackward(cos: cos, labels: labels, classes: classes)
            #expect(single.loss.map(\.bitPattern) == many.loss.map(\.bitPattern))
            #expect(single.gradient.map(\.bitPattern) == many.gradient.map(\.bitPattern))
        }
    }

    @Test func forwardBackwardAgreesWithSeparateCalls() throws {
        var rng = SeededGenerator(seed: 5)
        let (rows, classes) = (17, 40)
        let cos = (0..<rows * classes).map { _ in Double.random(in: -1...1, using: &rng) }
        let labels = (0..<rows).map { _ in Int64.random(in: 0..<Int64(classes), using: &rng) }
        for reduction in Reduction.allCases {
            let loss = AMMSoftmaxLoss(LossParameters(reduction: reduction))
            let both = try loss.forwardBackward(cos: cos, labels: labels, classes: classes)
            #expect(try loss.forward(cos: cos, labels: labels, classes: classes) == both.loss)
            let ones = [Double](repeating: 1, count: both.loss.count)
            #expect(try loss.backward(cos: cos, labels: labels, classes: classes, gradOutput: ones)
                    == both.gradient)
        }
    }
}
