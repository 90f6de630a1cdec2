import AMMSoftmaxCore
import CAMMSoftmax

#if canImport(Glibc)
import Glibc
#endif

/// The size of version 0.1's amm_params (up to and including ignore_index): the smallest
/// struct_size this library accepts. Fields added later take their defaults when the caller's
/// struct_size does not cover them.
let minimumParamsSize = MemoryLayout<amm_params>.offset(of: \amm_params.ignore_index)!
    + MemoryLayout<Int64>.size

extension LossParameters {
    /// Fills an amm_params with the defaults (the body of `amm_params_init`).
    static func writeDefaults(to p: UnsafeMutablePointer<amm_params>) {
        let d = LossParameters()
        p.pointee = amm_params(
            struct_size: UInt32(MemoryLayout<amm_params>.size), scale: d.scale,
            margin: d.margin, hard_margin: d.hardMargin, target: d.target.rawValue,
            hard: d.hard.rawValue, reduction: d.reduction.rawValue,
            num_threads: Int32(d.numThreads), ignore_index: d.ignoreIndex, head_block_size: 0,
            hard_negatives: nil)
    }

    /// The caller's amm_params, read only as far as its struct_size reaches; later fields
    /// keep their defaults.
    static func read(_ p: UnsafePointer<amm_params>, size: Int) -> amm_params {
        var raw = amm_params()
        writeDefaults(to: &raw)
        _ = withUnsafeMutableBytes(of: &raw) {
            memcpy($0.baseAddress!, p, Swift.min(size, $0.count))
        }
        return raw
    }

    /// Reads and validates a caller's amm_params.
    init(abi p: UnsafePointer<amm_params>?) throws(ABIError) {
        guard let p else { throw ABIError(AMM_ERR_NULL_POINTER, "params is NULL") }
        // struct_size is the first field of every version: read it before the rest.
        let size = Int(p.withMemoryRebound(to: UInt32.self, capacity: 1) { $0.pointee })
        guard size >= minimumParamsSize else {
            throw ABIError(AMM_ERR_PARAM, "params->struct_size = \(size) is too small: must be "
                + ">= \(minimumParamsSize) (call amm_params_init first)")
        }
        let raw = Self.read(p, size: size)
        guard let target = TargetKind(rawValue: raw.target) else {
            throw ABIError(AMM_ERR_PARAM, "params->target = \(raw.target) is unknown: must be "
                + "AMM_TARGET_ARC (0) or AMM_TARGET_COS (1)")
        }
        guard let hard = HardKind(rawValue: raw.hard) else {
            throw ABIError(AMM_ERR_PARAM, "params->hard = \(raw.hard) is unknown: must be "
                + "AMM_HARD_AMM (0), AMM_HARD_MV_FIXED (1), AMM_HARD_MV_ADAPTIVE (2) "
                + "or AMM_HARD_NONE (3)")
        }
        guard let reduction = Reduction(rawValue: raw.reduction) else {
            throw ABIError(AMM_ERR_PARAM, "params->reduction = \(raw.reduction) is unknown: must "
                + "be AMM_REDUCTION_MEAN (0), AMM_REDUCTION_SUM (1) or AMM_REDUCTION_NONE (2)")
        }
        self.init(scale: raw.scale, margin: raw.margin, hardMargin: raw.hard_margin,
                  target: target, hard: hard, reduction: reduction,
                  ignoreIndex: raw.ignore_index, numThreads: Int(raw.num_threads))
        do { try validate() } catch { throw ABIError(error) }
    }
}

/// The head's block size from a caller's amm_params (0, the automatic rule, when its
/// struct_size predates the field). Call after `LossParameters(abi:)` has checked the struct.
func headBlockSize(_ p: UnsafePointer<amm_params>) throws(ABIError) -> Int {
    let size = Int(p.withMemoryRebound(to: UInt32.self, capacity: 1) { $0.pointee })
    let value = LossParameters.read(p, size: size).head_block_size
    guard value >= 0 else {
        throw ABIError(AMM_ERR_PARAM, "params->head_block_size = \(value) is invalid: must be "
            + ">= 0 (0 = automatic)")
    }
    return Int(value)
}

/// The optional per-row output of hard-negative counts (NULL unless the caller's struct_size
/// covers the field and the caller set it).
func hardNegativeCounts(_ p: UnsafePointer<amm_params>) -> UnsafeMutablePointer<Int64>? {
    let size = Int(p.withMemoryRebound(to: UInt32.self, capacity: 1) { $0.pointee })
    return LossParameters.read(p, size: size).hard_negatives
}
