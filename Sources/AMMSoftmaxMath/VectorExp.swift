import CVectorMath

/// Vectorised e^x for the softmax: `Float.vectorExp` and `Double.vectorExp`.
///
/// Method (Cody and Waite): x = k ln 2 + r with k = round(x / ln 2) and |r| <= ln(2)/2, ln 2
/// split in a high part exact in k * ln2hi and a low part; e^r by a polynomial; 2^k built
/// directly in the exponent bits. Rounding to k uses the 1.5 * 2^p "magic number" addition,
/// which needs no rounding instruction (so baseline SSE2 code stays vectorised) and leaves k in
/// the low bits of the sum.
///
/// Accuracy, as the tests check it against the correctly rounded value over [-87, 0] (Float)
/// and [-708, 0] (Double): at most 2 ulp for Float (a degree-6 polynomial),
/// at most 1 ulp for Double (Taylor to degree 13). Domain: results below the smallest normal
/// number (x < -87.33 for Float, x < -708.39 for Double, and x = -infinity) are flushed to +0;
/// x must not exceed 88.7 (Float) or 709.7 (Double), which the kernels guarantee: they
/// exponentiate logits minus a reference that is at most 40 below any of them
/// (RowAccumulator.headroom), and differences of logits. NaN in, unspecified out.
/// Below the normal range the arithmetic produces garbage (k wraps the exponent field, and at
/// -infinity r is NaN), which the final selection replaces with 0; so no clamp of x is needed.
///
/// The arithmetic is in CVectorMath (`amm_exp_f32x16`, `amm_exp_f64x8`), written with clang's
/// vector extensions: each a * b + c of the reduction and the polynomial is one fused
/// multiply-add in the builds whose CPUs have FMA (AVX2, AVX-512), which shortens the
/// exponential's dependency chain, and a product and a sum in the baseline x86-64 build. The
/// builds with FMA compute the same bits as each other (the AVX-512 build scales by 2^k with
/// vscalefps, exactly as the product does), and the baseline build may differ from them in the
/// last bit of an exponential (both are within the bounds above, and the tests check each).
/// The Float polynomial is evaluated by Estrin's scheme, whose shorter dependency chain suits
/// loops bound by the exponential's latency.
extension Float {
    @inlinable @inline(__always)
    public static func vectorExp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        amm_exp_f32x16(x)
    }
}

extension Double {
    @inlinable @inline(__always)
    public static func vectorExp(_ x: SIMD8<Double>) -> SIMD8<Double> {
        amm_exp_f64x8(x)
    }
}
