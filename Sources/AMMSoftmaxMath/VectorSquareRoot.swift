/// Vectorised square root and reciprocal square root on [0, 1], for
/// sin(theta) = sqrt((1 - c)(1 + c)) of hard negatives and the 1/sin(theta) of their derivative.
///
/// Swift's `squareRoot()` on a SIMD vector calls the C library's sqrtf lane by lane (it keeps
/// errno semantics), so this computes with vector arithmetic: the reciprocal square root y from
/// the classic bit-level first guess (3.4% error), refined by Newton steps
/// y <- y (3 - x y^2) / 2, each of which squares the error (3 for Float, 4 for Double); then
/// sqrt(x) = x y with one final Newton correction s <- s + y (x - s^2) / 2. Accuracy on [0, 1],
/// measured by the tests: within 2 ulp of the correctly rounded values for both. At x = 0 the
/// root is exactly 0 and y is huge (about 4e19 for Float), which callers bound. Only +, -, *
/// and bit operations, like VectorExp.swift, so every instruction set computes the same bits.
///
/// Double writes the reciprocal's last step as the correction y + y (1 - x y^2) / 2, which
/// rounds less and which it needs for 2 ulp. Float writes it as the plain step: with the
/// correction form, LLVM's vectoriser cut the amm kernels' mining arithmetic into scalar and
/// 128-bit pieces, and they ran at 60% of their speed (Swift's SIMD arithmetic is lane loops
/// that LLVM has to re-vectorise; the disassembly shows whether it did).
extension Float {
    /// sqrt(x): two Newton steps on 1/sqrt(x) (error 4.5e-6) suffice before the final
    /// correction of the root, which squares the error again.
    @inlinable @inline(__always)
    public static func vectorRoot(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let (s, y) = rootSteps(x)
        return s + (y * 0.5) * (x - s * s)
    }

    /// sqrt(x) and 1/sqrt(x): the reciprocal takes a third step.
    @inlinable @inline(__always)
    public static func vectorRootAndReciprocalRoot(_ x: SIMD16<Float>)
        -> (root: SIMD16<Float>, reciprocal: SIMD16<Float>)
    {
        let (s, y) = rootSteps(x)
        let half = x * 0.5
        let reciprocal = y * (1.5 - half * y * y)
        return (s + (y * 0.5) * (x - s * s), reciprocal)
    }

    /// x y and y after two Newton steps from the bit-level guess.
    @inlinable @inline(__always)
    static func rootSteps(_ x: SIMD16<Float>) -> (SIMD16<Float>, SIMD16<Float>) {
        let bits = unsafeBitCast(x, to: SIMD16<UInt32>.self)
        var y = unsafeBitCast(0x5F37_5A86 &- (bits &>> 1), to: SIMD16<Float>.self)
        let half = x * 0.5
        y = y * (1.5 - half * y * y)
        y = y * (1.5 - half * y * y)
        return (x * y, y)
    }
}

extension Double {
    /// sqrt(x): three Newton steps on 1/sqrt(x) (error 3e-11), then the correction of the root.
    @inlinable @inline(__always)
    public static func vectorRoot(_ x: SIMD8<Double>) -> SIMD8<Double> {
        let (s, y) = rootSteps(x)
        return s + (y * 0.5) * (x - s * s)
    }

    /// sqrt(x) and 1/sqrt(x): the reciprocal takes a fourth step.
    @inlinable @inline(__always)
    public static func vectorRootAndReciprocalRoot(_ x: SIMD8<Double>)
        -> (root: SIMD8<Double>, reciprocal: SIMD8<Double>)
    {
        let (s, y) = rootSteps(x)
        let half = x * 0.5
        let reciprocal = y + y * (0.5 - half * y * y)  // as a correction: less rounding
        return (s + (y * 0.5) * (x - s * s), reciprocal)
    }

    /// x y and y after three Newton steps from the bit-level guess.
    @inlinable @inline(__always)
    static func rootSteps(_ x: SIMD8<Double>) -> (SIMD8<Double>, SIMD8<Double>) {
        let bits = unsafeBitCast(x, to: SIMD8<UInt64>.self)
        var y = unsafeBitCast(0x5FE6_EB50_C7B5_37A9 &- (bits &>> 1), to: SIMD8<Double>.self)
        let half = x * 0.5
        y = y * (1.5 - half * y * y)
        y = y * (1.5 - half * y * y)
        y = y * (1.5 - half * y * y)
        return (x * y, y)
    }
}
