import CVectorMath

// The row kernels' one-pass loop over a stretch of negatives (CVectorMath,
// amm_exponentiate_stretch.h): logits z_j = s g(c_j) exponentiated against a reference known
// in advance, summed (in Double), their maximum, the NaN check, and e_j dg/dc_j stored when
// `weighted` is given. The loop is in C, software-pipelined; see the header for why and for
// the order of the sums. Each z_j and e_j is computed by the same operations as in
// `NegativeLogit.minedValues` and `vectorExp`, so the numbers agree with the two-pass way.

/// Bytes the one-pass loop copies out while it runs: `count` elements from `from` to `to`,
/// with streaming stores, four vectors an iteration (`to` 64-byte aligned); the loop reports how
/// many it copied (a multiple of four vectors, at most `count`).
public struct StretchCopy<T> {
    public let from: UnsafePointer<T>
    public let to: UnsafeMutablePointer<T>
    public let count: Int

    @inlinable
    public init(from: UnsafePointer<T>, to: UnsafeMutablePointer<T>, count: Int) {
        self.from = from
        self.to = to
        self.count = count
    }
}

extension NegativeLogit {
    /// The variant as the C loop names it.
    @inlinable
    var miningKind: Int32 {
        switch kind {
        case .amm: return Int32(AMM_MINING_AMM)
        case .mvFixed, .mvAdaptive: return Int32(AMM_MINING_LINEAR)
        case .curricular: return Int32(AMM_MINING_CURRICULAR)
        case .none: return Int32(AMM_MINING_NONE)
        }
    }
}

extension NegativeLogit where T == Float {
    /// The one-pass loop over `count` cosines (see the top of this file), a multiple of the
    /// vector width; of `copy`, if given, it copies what it can while it runs (`copied`).
    @inlinable
    public func exponentiateStretch(
        _ cosines: UnsafePointer<Float>, count: Int, scale: Float, reference: Float,
        weighted: UnsafeMutablePointer<Float>?, copy: StretchCopy<Float>? = nil
    ) -> (nanCheck: SIMD16<Float>, maximum: SIMD16<Float>, sum: Double, copied: Int) {
        var mining = amm_mining_f32(
            kind: miningKind, unit_slope: unitDerivative ? 1 : 0, threshold: threshold,
            cos_t: cosT, sin_t: sinT, bound: angleBound, ceiling: Float(1 / Angles.sinFloor),
            slope: slope, offset: offset)
        var out = amm_stretch_f32()
        amm_exponentiate_stretch_f32(cosines, count, scale, reference, &mining, weighted,
                                     copy?.from, copy?.to, copy?.count ?? 0, &out)
        let nanCheck = withUnsafeBytes(of: out.nan_check) {
            $0.loadUnaligned(as: SIMD16<Float>.self)
        }
        let maximum = withUnsafeBytes(of: out.maximum) {
            $0.loadUnaligned(as: SIMD16<Float>.self)
        }
        return (nanCheck, maximum, out.sum, out.copied)
    }
}

extension NegativeLogit where T == Double {
    /// The one-pass loop over `count` cosines (see the top of this file), a multiple of the
    /// vector width; of `copy`, if given, it copies what it can while it runs (`copied`).
    @inlinable
    public func exponentiateStretch(
        _ cosines: UnsafePointer<Double>, count: Int, scale: Double, reference: Double,
        weighted: UnsafeMutablePointer<Double>?, copy: StretchCopy<Double>? = nil
    ) -> (nanCheck: SIMD8<Double>, maximum: SIMD8<Double>, sum: Double, copied: Int) {
        var mining = amm_mining_f64(
            kind: miningKind, unit_slope: unitDerivative ? 1 : 0, threshold: threshold,
            cos_t: cosT, sin_t: sinT, bound: angleBound, ceiling: 1 / Angles.sinFloor,
            slope: slope, offset: offset)
        var out = amm_stretch_f64()
        amm_exponentiate_stretch_f64(cosines, count, scale, reference, &mining, weighted,
                                     copy?.from, copy?.to, copy?.count ?? 0, &out)
        let nanCheck = withUnsafeBytes(of: out.nan_check) {
            $0.loadUnaligned(as: SIMD8<Double>.self)
        }
        let maximum = withUnsafeBytes(of: out.maximum) {
            $0.loadUnaligned(as: SIMD8<Double>.self)
        }
        return (nanCheck, maximum, out.sum, out.copied)
    }
}
