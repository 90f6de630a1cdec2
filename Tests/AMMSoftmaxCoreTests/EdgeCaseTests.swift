import Foundation
import Testing
@testable import AMMSoftmaxCore

/// The edges of the domain, checked against closed forms: with two classes and hard = none the
/// loss is softplus(s g - s f), so each case pins f or g to the value docs/FORMULATION.md gives.
@Suite("Edge cases")
struct EdgeCaseTests {
    func softplus(_ x: Double) -> Double { x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)) }

    @Test(arguments: allVariants)
    func oneClassHasZeroLossAndGradient(target: TargetKind, hard: HardKind) throws {
        for reduction in Reduction.allCases {
            let loss = AMMSoftmaxLoss(LossParameters(target: target, hard: hard, reduction: reduction))
            let (l, g) = try loss.forwardBackward(cos: [0.3, -1, 1] as [Double], labels: [0, 0, 0], classes: 1)
            #expect(l.allSatisfy { $0 == 0 })
            #expect(g == [0, 0, 0])
        }
    }

    @Test func noRowsGivesZeroOrEmpty() throws {
        for (reduction, expected) in [(Reduction.mean, [0.0]), (.sum, [0.0]), (.none, [])] {
            let loss = AMMSoftmaxLoss(LossParameters(reduction: reduction))
            let (l, g) = try loss.forwardBackward(cos: [Double](), labels: [], classes: 10)
            #expect(l == expected)
            #expect(g.isEmpty)
        }
    }

    @Test func allRowsIgnoredGivesZero() throws {
        let cos: [Double] = [0.1, 0.9, .nan, 0.3]  // NaN is allowed in ignored rows
        for reduction in Reduction.allCases {
            let loss = AMMSoftmaxLoss(LossParameters(reduction: reduction))
            let (l, g) = try loss.forwardBackward(cos: cos, labels: [-100, -100], classes: 2)
            #expect(l.allSatisfy { $0 == 0 })
            #expect(g == [0, 0, 0, 0])
        }
    }

    @Test func cosFaceTwoClassesClosedForm() throws {
        let p = LossParameters(scale: 30, margin: 0.35, target: .cos, hard: .none, reduction: .none)
        let l = try AMMSoftmaxLoss(p).forward(cos: [0.6, 0.2, -0.4, 0.7], labels: [0, 0], classes: 2)
        #expect(close(l[0], softplus(30 * (0.2 - (0.6 - 0.35))), rtol: 1e-14, atol: 0))
        #expect(close(l[1], softplus(30 * (0.7 - (-0.4 - 0.35))), rtol: 1e-14, atol: 0))
    }

    /// At c_y = cos(pi - m) exactly, theta_y + m = pi: the fallback f = c_y - m sin m applies;
    /// one ulp above, the angular margin does (f = cos(theta + m), about -1).
    @Test func arcFallbackBoundary() throws {
        let m = 0.5, s = 1.0
        let p = LossParameters(scale: s, margin: m, target: .arc, hard: .none, reduction: .none)
        let boundary = cos(Double.pi - m)
        let cn = 0.1
        let at = try AMMSoftmaxLoss(p).forwardBackward(cos: [boundary, cn], labels: [0], classes: 2)
        #expect(close(at.loss[0], softplus(s * (cn - (boundary - m * sin(m)))), rtol: 1e-14, atol: 0))
        // Fallback: df/dc = 1, so d loss/d c_y = -s (1 - p_y).
        let py = 1 / (1 + exp(s * (cn - (boundary - m * sin(m)))))
        #expect(close(at.gradient[0], -s * (1 - py), rtol: 1e-13, atol: 0))

        let above = boundary.nextUp
        let f = cos(acos(above) + m)
        let past = try AMMSoftmaxLoss(p).forward(cos: [above, cn], labels: [0], classes: 2)
        #expect(close(past[0], softplus(s * (cn - f)), rtol: 1e-12, atol: 0))
        #expect(abs(f + 1) < 1e-7)
    }

    /// cos = +-1 for the target: theta = 0 or pi, sin(theta) floored at 1e-7, so df/dc is
    /// cos m + sin m (+-1) / 1e-7: huge but finite, and the gradient says so exactly.
    @Test(arguments: [1.0, -1.0, 1.0000001, -1.0000001])
    func arcTargetAtTheEnds(cy: Double) throws {
        let (s, m) = (64.0, 0.5)
        let p = LossParameters(scale: s, margin: m, target: .arc, hard: .none, reduction: .sum)
        let (l, g) = try AMMSoftmaxLoss(p).forwardBackward(cos: [cy, 0.2], labels: [0], classes: 2)
        let cc = min(max(cy, -1), 1)
        let inside = cy > cos(Double.pi - m)
        let f = inside ? cos(acos(cc) + m) : cy - m * sin(m)
        let df = inside ? cos(m) + sin(m) * cc / 1e-7 : 1
        #expect(close(l[0], softplus(s * (0.2 - f)), rtol: 1e-12, atol: 1e-15))
        // 1 - p_y = e / (1 + e), e = exp(z_n - z_y): exact even where p_y rounds to 1 (at
        // c_y = 1, 1 - p_y ~ 1e-19 and the gradient ~ -5e-11 must not collapse to 0).
        let e = exp(s * (0.2 - f))
        #expect(close(g[0], -s * (e / (1 + e)) * df, rtol: 1e-9, atol: 0), "\(g[0])")
        #expect(g.allSatisfy { $0.isFinite })
    }

    /// amm on a hard negative: theta_j just above t gets the margin, just below gets g = 1 with
    /// zero derivative (cos(max(theta - t, 0))).
    @Test func ammAroundTheHardMargin() throws {
        let (s, t) = (4.0, 0.2)
        let p = LossParameters(scale: s, margin: 0.5, hardMargin: t, target: .cos, hard: .amm,
                               reduction: .sum)
        let loss = AMMSoftmaxLoss(p)
        let cy = 0.5  // f = 0: both negatives below are hard
        for (cn, expectG, zeroSlope) in [(cos(t) + 1e-9, 1.0, true),
                                         (cos(t) - 1e-6, cos(acos(cos(t) - 1e-6) - t), false),
                                         (1.0, 1.0, true)] {
            let (l, g) = try loss.forwardBackward(cos: [cy, cn], labels: [0], classes: 2)
            #expect(close(l[0], softplus(s * (expectG - (cy - 0.5))), rtol: 1e-12, atol: 0))
            #expect((g[1] == 0) == zeroSlope, "c_j = \(cn): dg \(g[1])")
        }
    }

    /// When no negative is hard, every hard kind is plain softmax on the negatives; when all
    /// are, amm must differ from none (the mining really switches).
    @Test func miningSwitchesOnlyForHardNegatives() throws {
        let easy: [Double] = [0.95, -0.5, 0.1, -0.2, 0.3]   // f(0.95) ~ 0.69 > every negative
        let hard: [Double] = [-0.9, 0.5, 0.1, -0.2, 0.3]    // f(-0.9) < every negative
        for kind in HardKind.allCases {
            let withKind = AMMSoftmaxLoss(LossParameters(hardMargin: 0.3, hard: kind))
            let plain = AMMSoftmaxLoss(LossParameters(hardMargin: 0.3, hard: .none))
            let a = try withKind.forwardBackward(cos: easy, labels: [0], classes: 5)
            let b = try plain.forwardBackward(cos: easy, labels: [0], classes: 5)
            #expect(a.loss == b.loss && a.gradient == b.gradient, "\(kind) on easy negatives")
            if kind != .none {
                let c = try withKind.forward(cos: hard, labels: [0], classes: 5)
                let d = try plain.forward(cos: hard, labels: [0], classes: 5)
                #expect(c != d, "\(kind) on hard negatives")
            }
        }
    }

    /// A very large class count and scale stay finite and match the literal reference.
    @Test func largeScaleIsStable() throws {
        var rng = SeededGenerator(seed: 9)
        let classes = 2000
        let cos = (0..<2 * classes).map { _ in Double.random(in: -1...1, using: &rng) }
        let p = LossParameters(scale: 1000, reduction: .none)
        let got = try AMMSoftmaxLoss(p).forwardBackward(cos: cos, labels: [3, 1999], classes: classes)
        let want = LiteralReference(p: p).forwardBackward(cos: cos, labels: [3, 1999], classes: classes)
        #expect(firstMismatch(got.loss, want.loss, rtol: 1e-12, atol: 0) == nil)
        #expect(firstMismatch(got.gradient, want.gradient, rtol: 1e-9, atol: 1e-12) == nil)
    }
}
