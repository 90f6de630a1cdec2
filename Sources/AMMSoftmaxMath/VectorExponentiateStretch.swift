import CVectorMath

// The row kernels' one-pass loop over a stretch of negatives (CVectorMath,
// amm_exponentiate_stretch.h): logits z_j = s g(c_j) exponentiated against a reference known
// in advance, summed (in Double), their maximum, the NaN check, and e_j dg/dc_j stored when
// `weighted` is given. The loop is in C, software-pipelined; see the header for why and for
// the order of the sums. Each z_j and e_j is computed by the same operations as in
// `NegativeLogit.minedValues` and `vectorExp`, so the numbers agree with the two-pass way.

/// Bytes the one-pass loop copies out while it runs: `bytes` bytes from `from` to `to`, with
/// streaming stores, a step's worth an iteration (`to` 64-byte aligned); the loop reports how
/// many it copied (a multiple of 64, at most `bytes`). The bytes are copied unchanged, whatever
/// element type they hold.
public struct StretchCopy {
    public let from: UnsafeRawPointer
    public let to: UnsafeMutableRawPointer
    public let bytes: Int

    @inlinable
    public init(from: UnsafeRawPointer, to: UnsafeMutableRawPointer, bytes: Int) {
        self.from = from
        self.to = to
        self.bytes = bytes
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
    /// The variant and its constants as the C loop takes them.
    @inlinable
    var stretchMining: amm_mining_f32 {
        amm_mining_f32(
            kind: miningKind, unit_slope: unitDerivative ? 1 : 0, threshold: threshold,
            cos_t: cosT, sin_t: sinT, bound: angleBound, ceiling: Float(1 / Angles.sinFloor),
            slope: slope, offset: offset)
    }

    /// What a C loop returned, as Swift values.
    @inlinable
    static func stretchResult(
        _ out: amm_stretch_f32
    ) -> (nanCheck: SIMD16<Float>, maximum: SIMD16<Float>, sum: Double, copied: Int) {
        let nanCheck = withUnsafeBytes(of: out.nan_check) {
            $0.loadUnaligned(as: SIMD16<Float>.self)
        }
        let maximum = withUnsafeBytes(of: out.maximum) {
            $0.loadUnaligned(as: SIMD16<Float>.self)
        }
        return (nanCheck, maximum, out.sum, out.copied)
    }

    /// The one-pass loop over `count` cosines (see the top of this file), a multiple of the
    /// vector width; of `copy`, if given, it copies what it can while it runs (`copied`).
    @inlinable
    public func exponentiateStretch(
        _ cosines: UnsafePointer<Float>, count: Int, scale: Float, reference: Float,
        weighted: UnsafeMutablePointer<Float>?, copy: StretchCopy? = nil
    ) -> (nanCheck: SIMD16<Float>, maximum: SIMD16<Float>, sum: Double, copied: Int) {
        var mining = stretchMining
        var out = amm_stretch_f32()
        amm_exponentiate_stretch_f32(cosines, count, scale, reference, &mining, weighted,
                                     copy?.from.assumingMemoryBound(to: UInt8.self),
                                     copy?.to.assumingMemoryBound(to: UInt8.self),
                                     copy?.bytes ?? 0, &out)
        return Self.stretchResult(out)
    }
}

extension NegativeLogit where T == Double {
    /// The one-pass loop over `count` cosines (see the top of this file), a multiple of the
    /// vector width; of `copy`, if given, it copies what it can while it runs (`copied`).
    @inlinable
    public func exponentiateStretch(
        _ cosines: UnsafePointer<Double>, count: Int, scale: Double, reference: Double,
        weighted: UnsafeMutablePointer<Double>?, copy: StretchCopy? = nil
    ) -> (nanCheck: SIMD8<Double>, maximum: SIMD8<Double>, sum: Double, copied: Int) {
        var mining = amm_mining_f64(
            kind: miningKind, unit_slope: unitDerivative ? 1 : 0, threshold: threshold,
            cos_t: cosT, sin_t: sinT, bound: angleBound, ceiling: 1 / Angles.sinFloor,
            slope: slope, offset: offset)
        var out = amm_stretch_f64()
        amm_exponentiate_stretch_f64(cosines, count, scale, reference, &mining, weighted,
                                     copy?.from.assumingMemoryBound(to: UInt8.self),
                                     copy?.to.assumingMemoryBound(to: UInt8.self),
                                     copy?.bytes ?? 0, &out)
        let nanCheck = withUnsafeBytes(of: out.nan_check) {
            $0.loadUnaligned(as: SIMD8<Double>.self)
        }
        let maximum = withUnsafeBytes(of: out.maximum) {
            $0.loadUnaligned(as: SIMD8<Double>.self)
        }
        return (nanCheck, maximum, out.sum, out.copied)
    }
}

/// A 16-bit storage format of cosines and gradients (docs/FORMULATION.md, "Half precision"),
/// as the C loops name it.
public enum HalfStorage: Int32, Sendable {
    /// bfloat16: float's exponent, 8 bits of significand (largest about 3.39e38).
    case bfloat16 = 0  // AMM_STORAGE_BF16
    /// IEEE binary16: 5 exponent bits, 11 of significand (largest 65504).
    case float16 = 1  // AMM_STORAGE_F16

    /// The name an error message gives the element type.
    public var name: String { self == .bfloat16 ? "bfloat16" : "float16" }
    /// The largest finite value.
    public var largest: Double { self == .bfloat16 ? 0x1.FEp127 : 65504 }

    /// The exact Float value of one stored value.
    @inlinable
    public func widen(_ value: UInt16) -> Float { amm_widen_one(value, rawValue) }
}

extension NegativeLogit where T == Float {
    /// The one-pass loop over `count` cosines stored in 16 bits (a multiple of the vector
    /// width), each widened exactly to Float as it is read: the numbers of the Float loop on
    /// the widened row, bit for bit, without that row ever being written. Of `copy` (a 16-bit
    /// gradient row), two lines an iteration.
    @inlinable
    public func exponentiateStretch(
        _ cosines: UnsafePointer<UInt16>, storage: HalfStorage, count: Int, scale: Float,
        reference: Float, weighted: UnsafeMutablePointer<Float>?, copy: StretchCopy? = nil
    ) -> (nanCheck: SIMD16<Float>, maximum: SIMD16<Float>, sum: Double, copied: Int) {
        var mining = stretchMining
        var out = amm_stretch_f32()
        let from = copy?.from.assumingMemoryBound(to: UInt8.self)
        let to = copy?.to.assumingMemoryBound(to: UInt8.self)
        switch storage {
        case .bfloat16:
            amm_exponentiate_stretch_bf16(cosines, count, scale, reference, &mining, weighted,
                                          from, to, copy?.bytes ?? 0, &out)
        case .float16:
            amm_exponentiate_stretch_f16(cosines, count, scale, reference, &mining, weighted,
                                         from, to, copy?.bytes ?? 0, &out)
        }
        return Self.stretchResult(out)
    }
}
