import CVectorMath

/// The amm negative logit over a vector (docs/FORMULATION.md, "Negative logit"), for
/// `NegativeLogit.minedValues` and `minedValuesAndDerivatives`: a hard lane (c > threshold)
/// gets g = cos(theta - t) = x cos t + sin(theta) sin t for the clamped cosine x (1 where
/// theta <= t, x > bound) and dg/dc = cos t - sin t x / max(sin(theta), 1e-7) (0 where
/// theta <= t); an easy lane gets c and 1.
///
/// The arithmetic is in CVectorMath (`amm_angular_negative_*`), written with clang's vector
/// extensions, because LLVM re-vectorises the same expression in Swift's generic SIMD code only
/// in part, differently from one build and one call site to the next. sin(theta) is the IEEE
/// square root of (1 - x)(1 + x), and 1/sin(theta) a division. The two products that are
/// summed, x cos t + sin(theta) sin t and cos t - (sin t x) / sin(theta), are fused
/// multiply-adds in the builds with FMA (AVX2, AVX-512), which compute the same bits as each
/// other; the baseline build rounds the product first (both within the tested bounds).
extension Float {
    @inlinable @inline(__always)
    public static func vectorAMMNegative(_ c: SIMD16<Float>, threshold: Float, cosT: Float,
                                         sinT: Float, bound: Float) -> SIMD16<Float> {
        amm_angular_negative_f32x16(c, threshold, cosT, sinT, bound)
    }

    @inlinable @inline(__always)
    public static func vectorAMMNegativeAndDerivative(
        _ c: SIMD16<Float>, threshold: Float, cosT: Float, sinT: Float, bound: Float,
        ceiling: Float
    ) -> (value: SIMD16<Float>, derivative: SIMD16<Float>) {
        var value = SIMD16<Float>(), derivative = SIMD16<Float>()
        amm_angular_negative_and_derivative_f32x16(c, threshold, cosT, sinT, bound, ceiling,
                                                   &value, &derivative)
        return (value, derivative)
    }
}

extension Double {
    @inlinable @inline(__always)
    public static func vectorAMMNegative(_ c: SIMD8<Double>, threshold: Double, cosT: Double,
                                         sinT: Double, bound: Double) -> SIMD8<Double> {
        amm_angular_negative_f64x8(c, threshold, cosT, sinT, bound)
    }

    @inlinable @inline(__always)
    public static func vectorAMMNegativeAndDerivative(
        _ c: SIMD8<Double>, threshold: Double, cosT: Double, sinT: Double, bound: Double,
        ceiling: Double
    ) -> (value: SIMD8<Double>, derivative: SIMD8<Double>) {
        var value = SIMD8<Double>(), derivative = SIMD8<Double>()
        amm_angular_negative_and_derivative_f64x8(c, threshold, cosT, sinT, bound, ceiling,
                                                  &value, &derivative)
        return (value, derivative)
    }
}
