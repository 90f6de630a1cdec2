import Foundation
import Testing
@testable import AMMSoftmaxCore

/// The vectorised exponential and square root against the C library, in units in the last place.
@Suite("Vector math accuracy")
struct VectorMathTests {
    static func ulps(_ a: Float, _ b: Float) -> Int {
        abs(Int(Int32(bitPattern: a.bitPattern)) - Int(Int32(bitPattern: b.bitPattern)))
    }

    static func ulps(_ a: Double, _ b: Double) -> Int {
        let d = Int64(bitPattern: a.bitPattern).subtractingReportingOverflow(Int64(bitPattern: b.bitPattern))
        return d.overflow ? .max : Int(d.partialValue.magnitude)
    }

    /// Float: within 2 ulp of the correctly rounded e^x (Double exp rounded to Float) on
    /// [-87.3, 0], checked on 2^20 points and the ends; below the normal range, exactly 0.
    @Test func floatExponential() {
        var worst = 0
        var x: [Float] = [0, -1e-30, -87.33, -0.3465736, 0.3465736, -20.5]
        var rng = SeededGenerator(seed: 1)
        for _ in 0..<(1 << 20) { x.append(Float.random(in: -87.33...0, using: &rng)) }
        for start in stride(from: 0, to: x.count - 15, by: 16) {
            let v = SIMD16<Float>((0..<16).map { x[start + $0] })
            let e = Float.vectorExp(v)
            for k in 0..<16 {
                worst = max(worst, Self.ulps(e[k], Float(Foundation.exp(Double(v[k])))))
            }
        }
        #expect(worst <= 2, "worst \(worst) ulp")
        let tiny = Float.vectorExp(SIMD16<Float>(repeating: -88))
        let minusInfinity = Float.vectorExp(SIMD16<Float>(repeating: -.infinity))
        #expect(tiny == .zero && minusInfinity == .zero)
    }

    /// Double: within 1 ulp of the C library's exp on [-708.3, 0] (2^20 points).
    @Test func doubleExponential() {
        var worst = 0
        var rng = SeededGenerator(seed: 2)
        for _ in 0..<(1 << 17) {
            let v = SIMD8<Double>((0..<8).map { _ in Double.random(in: -708.3...0, using: &rng) })
            let e = Double.vectorExp(v)
            for k in 0..<8 { worst = max(worst, Self.ulps(e[k], Foundation.exp(v[k]))) }
        }
        #expect(worst <= 1, "worst \(worst) ulp")
        #expect(Double.vectorExp(SIMD8<Double>(repeating: -.infinity)) == .zero)
    }

    /// sqrt and 1/sqrt on [0, 1]: within 2 ulp of the correctly rounded values (computed in
    /// Double for Float), exactly 0 at 0.
    @Test func squareRoots() {
        var rng = SeededGenerator(seed: 3)
        var worstF = (root: 0, reciprocal: 0), worstD = (root: 0, reciprocal: 0)
        for round in 0..<(1 << 16) {
            var xs = (0..<16).map { _ in Float.random(in: 0...1, using: &rng) }
            if round == 0 { xs[0] = 1; xs[1] = Float.leastNormalMagnitude; xs[2] = 1e-20 }
            let (r, y) = Float.vectorRootAndReciprocalRoot(SIMD16<Float>(xs))
            for k in 0..<16 where xs[k] > 0 {
                worstF.root = max(worstF.root, Self.ulps(r[k], Float(Double(xs[k]).squareRoot())))
                worstF.reciprocal = max(worstF.reciprocal,
                                        Self.ulps(y[k], Float(1 / Double(xs[k]).squareRoot())))
            }
            let xd = (0..<8).map { _ in Double.random(in: 0...1, using: &rng) }
            let (rd, yd) = Double.vectorRootAndReciprocalRoot(SIMD8<Double>(xd))
            for k in 0..<8 where xd[k] > 0 {
                worstD.root = max(worstD.root, Self.ulps(rd[k], xd[k].squareRoot()))
                worstD.reciprocal = max(worstD.reciprocal, Self.ulps(yd[k], 1 / xd[k].squareRoot()))
            }
        }
        #expect(worstF.root <= 2 && worstF.reciprocal <= 2, "Float \(worstF)")
        #expect(worstD.root <= 2 && worstD.reciprocal <= 2, "Double \(worstD)")
        #expect(Float.vectorRootAndReciprocalRoot(SIMD16<Float>()).root == .zero)
        #expect(Double.vectorRootAndReciprocalRoot(SIMD8<Double>()).root == .zero)
    }
}

extension VectorMathTests {
    /// The root alone and the root with its reciprocal agree bit for bit (the two passes of the
    /// kernels must see the same logits).
    @Test func rootAloneMatchesRootWithReciprocal() {
        var rng = SeededGenerator(seed: 4)
        for _ in 0..<4096 {
            let xf = SIMD16<Float>((0..<16).map { _ in Float.random(in: 0...1, using: &rng) })
            #expect(Float.vectorRoot(xf) == Float.vectorRootAndReciprocalRoot(xf).root)
            let xd = SIMD8<Double>((0..<8).map { _ in Double.random(in: 0...1, using: &rng) })
            #expect(Double.vectorRoot(xd) == Double.vectorRootAndReciprocalRoot(xd).root)
        }
    }
}
