/// Vectorised e^x for the softmax: `Float.vectorExp` and `Double.vectorExp`.
///
/// Method (Cody and Waite): x = k ln 2 + r with k = round(x / ln 2) and |r| <= ln(2)/2, ln 2
/// split in a high part exact in k * ln2hi and a low part; e^r by a polynomial; 2^k built
/// directly in the exponent bits. Rounding to k uses the 1.5 * 2^p "magic number" addition,
/// which needs no rounding instruction (so baseline SSE2 code stays vectorised) and leaves k in
/// the low bits of the sum.
///
/// Accuracy, measured against the correctly rounded value over [-87, 0] (Float) and
/// [-708, 0] (Double) by the tests: at most 2 ulp for Float (a degree-6 polynomial),
/// at most 1 ulp for Double (Taylor to degree 13). Domain: results below the smallest normal
/// number (x < -87.33 for Float, x < -708.39 for Double, and x = -infinity) are flushed to +0;
/// x must not exceed 88.7 (Float) or 709.7 (Double), which the kernels guarantee since they
/// only exponentiate z - max(z) <= 0 and differences of logits. NaN in, unspecified out.
/// Below the normal range the arithmetic produces garbage (k wraps the exponent field, and at
/// -infinity r is NaN), which the final selection replaces with 0; so no clamp of x is needed.
/// Only +, -, * and bit operations are used, never a fused multiply-add, so that every
/// instruction set computes the same bits.
extension Float {
    @inlinable @inline(__always)
    public static func vectorExp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let log2e: Float = 1.44269504088896341
        let magic: Float = 12_582_912  // 1.5 * 2^23
        let ln2hi: Float = 0.693359375, ln2lo: Float = -2.12194440e-4
        let minimum: Float = -87.33654  // ln(2^-126)
        let t = x * log2e + magic
        let k = t - magic  // round(x / ln 2), exact
        let r = (x - k * ln2hi) - k * ln2lo
        // e^r = 1 + r + r^2 q(r), q of degree 4 fitted to the relative error of e^r on
        // |r| <= ln(2)/2 (largest 7.3e-9, an eighth of an ulp): one Horner step fewer than
        // Cephes's degree-7 polynomial (5% off the forward pass), still within 2 ulp.
        var p = r * Float(1.3903069775551558e-3) + Float(8.366229012608528e-3)
        p = p * r + Float(4.1666775941848755e-2)
        p = p * r + Float(1.666654348373413e-1)
        p = p * r + Float(0.5)
        let er = p * (r * r) + r + 1
        // 2^k: k sits in the low mantissa bits of t (t = 1.5 * 2^23 + k).
        let kBits = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
        let scale = unsafeBitCast((kBits &+ 127) &<< 23, to: SIMD16<Float>.self)
        return (er * scale).replacing(with: 0, where: x .< minimum)
    }
}

extension Double {
    @inlinable @inline(__always)
    public static func vectorExp(_ x: SIMD8<Double>) -> SIMD8<Double> {
        let log2e = 1.4426950408889634074
        let magic = 6_755_399_441_055_744.0  // 1.5 * 2^52
        let ln2hi = 0.693147180369123816490, ln2lo = 1.90821492927058770002e-10
        let minimum = -708.3964185322641  // ln(2^-1022)
        let t = x * log2e + magic
        let k = t - magic
        let r = (x - k * ln2hi) - k * ln2lo
        // Taylor series of e^r to r^13 / 13!: truncation below 2e-18 for |r| <= ln(2)/2.
        var p = r * (1.0 / 6_227_020_800) + 1.0 / 479_001_600
        p = p * r + 1.0 / 39_916_800
        p = p * r + 1.0 / 3_628_800
        p = p * r + 1.0 / 362_880
        p = p * r + 1.0 / 40_320
        p = p * r + 1.0 / 5_040
        p = p * r + 1.0 / 720
        p = p * r + 1.0 / 120
        p = p * r + 1.0 / 24
        p = p * r + 1.0 / 6
        p = p * r + 0.5
        let er = p * (r * r) + r + 1
        let kBits = unsafeBitCast(t, to: SIMD8<Int64>.self) &- 0x4338_0000_0000_0000
        let scale = unsafeBitCast((kBits &+ 1023) &<< 52, to: SIMD8<Double>.self)
        return (er * scale).replacing(with: 0, where: x .< minimum)
    }
}
