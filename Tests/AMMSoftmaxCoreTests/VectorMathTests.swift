import CPlatform
import CVectorMathWithFMA
import Foundation
import Testing
@testable import AMMSoftmaxCore

/// The vectorised exponential against the C library, in units in the last place, and the amm
/// negative logit of a vector against its formula in Double. Each is checked twice: as this
/// module compiles it (baseline x86-64, a product and a sum for each a * b + c, as in the
/// portable kernel build), and as the AVX2 and AVX-512 builds compile it, with fused
/// multiply-adds (CVectorMathWithFMA, where the CPU has them).
@Suite("Vector math accuracy")
struct VectorMathTests {
    /// Whether this CPU can run the FMA compilation (x86-64-v3).
    static let fma: Bool = {
        guard amm_cpu_supports_x86_64_v3() != 0 else { return false }
        precondition(amm_fma_compiled() != 0, "CVectorMathWithFMA was compiled without FMA")
        return true
    }()

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
        var x: [Float] = [0, -1e-30, -87.33, -0.3465736, 0.3465736, -20.5, -88, -.infinity]
        var rng = SeededGenerator(seed: 1)
        for _ in 0..<(1 << 20) { x.append(Float.random(in: -87.33...0, using: &rng)) }
        x += [Float](repeating: 0, count: (16 - x.count % 16) % 16)
        var baseline = [Float](repeating: 0, count: x.count)
        for start in stride(from: 0, to: x.count, by: 16) {
            let e = Float.vectorExp(SIMD16<Float>(x[start..<(start + 16)]))
            for k in 0..<16 { baseline[start + k] = e[k] }
        }
        var fused = baseline
        if Self.fma { amm_fma_exp_f32(x, &fused, x.count) }
        for (name, e) in [("baseline", baseline), ("fma", fused)] {
            var worst = 0
            for k in x.indices where x[k] >= -87.33 {
                worst = max(worst, Self.ulps(e[k], Float(Foundation.exp(Double(x[k])))))
            }
            #expect(worst <= 2, "\(name): worst \(worst) ulp")
            #expect(e[6] == 0 && e[7] == 0, "\(name): e^-88 and e^-inf must be 0")
        }
    }

    /// Double: within 1 ulp of the C library's exp on [-708.3, 0] (2^20 points).
    @Test func doubleExponential() {
        var rng = SeededGenerator(seed: 2)
        var x = (0..<(1 << 20)).map { _ in Double.random(in: -708.3...0, using: &rng) }
        x[0] = -.infinity
        var baseline = [Double](repeating: 0, count: x.count)
        for start in stride(from: 0, to: x.count, by: 8) {
            let e = Double.vectorExp(SIMD8<Double>(x[start..<(start + 8)]))
            for k in 0..<8 { baseline[start + k] = e[k] }
        }
        var fused = baseline
        if Self.fma { amm_fma_exp_f64(x, &fused, x.count) }
        for (name, e) in [("baseline", baseline), ("fma", fused)] {
            var worst = 0
            for k in 1..<x.count { worst = max(worst, Self.ulps(e[k], Foundation.exp(x[k]))) }
            #expect(worst <= 1, "\(name): worst \(worst) ulp")
            #expect(e[0] == 0, "\(name): e^-inf must be 0")
        }
    }

    /// The amm negative logit of a vector (CVectorMath) against the formula in Double, with the
    /// same rounded constants: cosines past +-1 (clamped), at +-1 (the 1e-7 floor on
    /// sin(theta)), around the threshold and around theta = t; and the value alone is bit for
    /// bit the value computed with the derivative (the forward and gradient passes must see the
    /// same logits).
    @Test func ammNegativeAgreesWithDouble() {
        var rng = SeededGenerator(seed: 3)
        var worstF = (g: 0.0, dg: 0.0), worstD = (g: 0.0, dg: 0.0)
        var worstFusedF = (g: 0.0, dg: 0.0), worstFusedD = (g: 0.0, dg: 0.0)
        func expected(_ c: Double, cosT: Double, sinT: Double, bound: Double,
                      threshold: Double) -> (g: Double, dg: Double) {
            guard c > threshold else { return (c, 1) }
            let x = min(max(c, -1), 1)
            if x > bound { return (1, 0) }
            let sine = ((1 - x) * (1 + x)).squareRoot()
            return (x * cosT + sine * sinT, cosT - sinT * x / max(sine, 1e-7))
        }
        for round in 0..<(1 << 14) {
            let t = Double.random(in: 0...1.5, using: &rng)
            let threshold = Double.random(in: -1...1, using: &rng)
            var cs = (0..<16).map { _ in Double.random(in: -1.2...1.2, using: &rng) }
            if round == 0 { cs[0] = 1; cs[1] = -1; cs[2] = Foundation.cos(t); cs[3] = 1.1 }
            // Float
            let (cosF, sinF) = (Float(Foundation.cos(t)), Float(Foundation.sin(t)))
            let boundF = Float.largest(below: Foundation.cos(t)), thF = Float(threshold)
            let cf = SIMD16<Float>(cs.map { Float($0) })
            let (g, dg) = Float.vectorAMMNegativeAndDerivative(
                cf, threshold: thF, cosT: cosF, sinT: sinF, bound: boundF, ceiling: 1e7)
            #expect(Float.vectorAMMNegative(cf, threshold: thF, cosT: cosF, sinT: sinF,
                                            bound: boundF) == g)
            var fg = [Float](repeating: 0, count: 16), fdg = fg, falone = fg
            if Self.fma {
                amm_fma_amm_negative_f32(cs.map { Float($0) }, 16, thF, cosF, sinF, boundF, 1e7,
                                         &fg, &fdg, &falone)
                #expect(fg == falone)
            }
            for k in 0..<16 {
                let e = expected(Double(cf[k]), cosT: Double(cosF), sinT: Double(sinF),
                                 bound: Double(boundF), threshold: Double(thF))
                worstF.g = max(worstF.g, abs(Double(g[k]) - e.g))
                worstF.dg = max(worstF.dg, abs(Double(dg[k]) - e.dg) / max(1, abs(e.dg)))
                guard Self.fma else { continue }
                worstFusedF.g = max(worstFusedF.g, abs(Double(fg[k]) - e.g))
                worstFusedF.dg = max(worstFusedF.dg, abs(Double(fdg[k]) - e.dg) / max(1, abs(e.dg)))
            }
            // Double
            let (cosD, sinD) = (Foundation.cos(t), Foundation.sin(t))
            let boundD = Double.largest(below: cosD)
            for half in 0..<2 {
                let cd = SIMD8<Double>(cs[(half * 8)..<(half * 8 + 8)])
                let (gd, dgd) = Double.vectorAMMNegativeAndDerivative(
                    cd, threshold: threshold, cosT: cosD, sinT: sinD, bound: boundD,
                    ceiling: 1 / Angles.sinFloor)
                #expect(Double.vectorAMMNegative(cd, threshold: threshold, cosT: cosD,
                                                 sinT: sinD, bound: boundD) == gd)
                var fg = [Double](repeating: 0, count: 8), fdg = fg, falone = fg
                if Self.fma {
                    amm_fma_amm_negative_f64(Array(cs[(half * 8)..<(half * 8 + 8)]), 8, threshold,
                                             cosD, sinD, boundD, 1 / Angles.sinFloor, &fg, &fdg,
                                             &falone)
                    #expect(fg == falone)
                }
                for k in 0..<8 {
                    let e = expected(cd[k], cosT: cosD, sinT: sinD, bound: boundD,
                                     threshold: threshold)
                    worstD.g = max(worstD.g, abs(gd[k] - e.g))
                    worstD.dg = max(worstD.dg, abs(dgd[k] - e.dg) / max(1, abs(e.dg)))
                    guard Self.fma else { continue }
                    worstFusedD.g = max(worstFusedD.g, abs(fg[k] - e.g))
                    worstFusedD.dg = max(worstFusedD.dg, abs(fdg[k] - e.dg) / max(1, abs(e.dg)))
                }
            }
        }
        // g in [-1, 1]: a few ulp of 1; dg relative to max(1, |dg|) (it reaches 1e7 sin t).
        #expect(worstF.g <= 4e-7 && worstF.dg <= 4e-7, "Float \(worstF)")
        #expect(worstD.g <= 1e-15 && worstD.dg <= 1e-15, "Double \(worstD)")
        #expect(worstFusedF.g <= 4e-7 && worstFusedF.dg <= 4e-7, "Float, FMA \(worstFusedF)")
        #expect(worstFusedD.g <= 1e-15 && worstFusedD.dg <= 1e-15, "Double, FMA \(worstFusedD)")
    }
}
