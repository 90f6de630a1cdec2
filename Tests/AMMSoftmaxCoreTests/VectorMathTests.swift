import CPlatform
import CVectorMathAVX2Probe
import CVectorMathAVX512Probe
import Foundation
import Testing
@testable import AMMSoftmaxCore

/// The vectorised exponential against the C library, in units in the last place, and the amm
/// negative logit of a vector against its formula in Double. Each is checked as this module
/// compiles it (baseline x86-64, a product and a sum for each a * b + c, as in the portable
/// kernel build) and as the AVX2 and AVX-512 builds compile it, with fused multiply-adds (and
/// vscalefps in the AVX-512 exponential): the probe targets, where the CPU runs them.
@Suite("Vector math accuracy")
struct VectorMathTests {
    typealias ExpF32 = @convention(c) (UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int) -> Void
    typealias ExpF64 = @convention(c) (UnsafePointer<Double>?, UnsafeMutablePointer<Double>?, Int) -> Void
    typealias NegativeF32 = @convention(c) (UnsafePointer<Float>?, Int, Float, Float, Float, Float, Float,
                             UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?,
                             UnsafeMutablePointer<Float>?) -> Void
    typealias NegativeF64 = @convention(c) (UnsafePointer<Double>?, Int, Double, Double, Double, Double, Double,
                             UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Double>?,
                             UnsafeMutablePointer<Double>?) -> Void
    struct Compilation: Sendable {
        let name: String
        let expF32: ExpF32, expF64: ExpF64
        let negativeF32: NegativeF32, negativeF64: NegativeF64
    }

    /// The FMA compilations this CPU runs (both were compiled with FMA, or the test is void).
    static let compilations: [Compilation] = {
        var list: [Compilation] = []
        if amm_cpu_supports_x86_64_v3() != 0 {
            precondition(amm_avx2_compiled_with_fma() != 0)
            list.append(Compilation(name: "avx2", expF32: amm_avx2_exp_f32,
                                    expF64: amm_avx2_exp_f64,
                                    negativeF32: amm_avx2_amm_negative_f32,
                                    negativeF64: amm_avx2_amm_negative_f64))
        }
        if amm_cpu_supports_x86_64_v4() != 0 {
            precondition(amm_avx512_compiled_with_fma() != 0)
            list.append(Compilation(name: "avx512", expF32: amm_avx512_exp_f32,
                                    expF64: amm_avx512_exp_f64,
                                    negativeF32: amm_avx512_amm_negative_f32,
                                    negativeF64: amm_avx512_amm_negative_f64))
        }
        return list
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
        var results = [("baseline", baseline)]
        for compiled in Self.compilations {
            var e = baseline
            compiled.expF32(x, &e, x.count)
            results.append((compiled.name, e))
        }
        if results.count == 3 {
            let same = results[1].1 == results[2].1  // (an array in #expect would be printed)
            #expect(same, "avx2 and avx512 differ")
        }
        for (name, e) in results {
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
        var results = [("baseline", baseline)]
        for compiled in Self.compilations {
            var e = baseline
            compiled.expF64(x, &e, x.count)
            results.append((compiled.name, e))
        }
        if results.count == 3 {
            let same = results[1].1 == results[2].1  // (an array in #expect would be printed)
            #expect(same, "avx2 and avx512 differ")
        }
        for (name, e) in results {
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
        // The FMA compilations, by name.
        var worstFusedF: [String: (g: Double, dg: Double)] = [:], worstFusedD = worstFusedF
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
            var fused: [(name: String, g: [Float], dg: [Float])] = []
            for compiled in Self.compilations {
                var fg = [Float](repeating: 0, count: 16), fdg = fg, falone = fg
                compiled.negativeF32(cs.map { Float($0) }, 16, thF, cosF, sinF, boundF, 1e7,
                                     &fg, &fdg, &falone)
                #expect(fg == falone)
                fused.append((compiled.name, fg, fdg))
            }
            for k in 0..<16 {
                let e = expected(Double(cf[k]), cosT: Double(cosF), sinT: Double(sinF),
                                 bound: Double(boundF), threshold: Double(thF))
                worstF.g = max(worstF.g, abs(Double(g[k]) - e.g))
                worstF.dg = max(worstF.dg, abs(Double(dg[k]) - e.dg) / max(1, abs(e.dg)))
                for f in fused {
                    let w = worstFusedF[f.name] ?? (0, 0)
                    worstFusedF[f.name] = (max(w.g, abs(Double(f.g[k]) - e.g)),
                                           max(w.dg, abs(Double(f.dg[k]) - e.dg) / max(1, abs(e.dg))))
                }
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
                var fused: [(name: String, g: [Double], dg: [Double])] = []
                for compiled in Self.compilations {
                    var fg = [Double](repeating: 0, count: 8), fdg = fg, falone = fg
                    compiled.negativeF64(Array(cs[(half * 8)..<(half * 8 + 8)]), 8, threshold,
                                         cosD, sinD, boundD, 1 / Angles.sinFloor, &fg, &fdg,
                                         &falone)
                    #expect(fg == falone)
                    fused.append((compiled.name, fg, fdg))
                }
                for k in 0..<8 {
                    let e = expected(cd[k], cosT: cosD, sinT: sinD, bound: boundD,
                                     threshold: threshold)
                    worstD.g = max(worstD.g, abs(gd[k] - e.g))
                    worstD.dg = max(worstD.dg, abs(dgd[k] - e.dg) / max(1, abs(e.dg)))
                    for f in fused {
                        let w = worstFusedD[f.name] ?? (0, 0)
                        worstFusedD[f.name] = (max(w.g, abs(f.g[k] - e.g)),
                                               max(w.dg, abs(f.dg[k] - e.dg) / max(1, abs(e.dg))))
                    }
                }
            }
        }
        // g in [-1, 1]: a few ulp of 1; dg relative to max(1, |dg|) (it reaches 1e7 sin t).
        #expect(worstF.g <= 4e-7 && worstF.dg <= 4e-7, "Float \(worstF)")
        #expect(worstD.g <= 1e-15 && worstD.dg <= 1e-15, "Double \(worstD)")
        for (name, w) in worstFusedF {
            #expect(w.g <= 4e-7 && w.dg <= 4e-7, "Float, \(name): \(w)")
        }
        for (name, w) in worstFusedD {
            #expect(w.g <= 1e-15 && w.dg <= 1e-15, "Double, \(name): \(w)")
        }
        #expect(worstFusedF.count == Self.compilations.count)
    }
}
