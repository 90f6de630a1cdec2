import AMMSoftmaxCore
import AMMSoftmaxHead
import CAMMSoftmax

#if canImport(Glibc)
import Glibc
#endif

/// A caller's `amm_params`, read once and validated: the loss parameters, and the two fields
/// that are not parameters of the loss (the head's block size and the optional output of
/// hard-negative counts).
///
/// The domains themselves are defined once, with the values they constrain:
/// `LossParameters.validate` (scale, margins, threads) and `HeadKernel.validateBlockSize`.
/// This type only decodes the C struct: its size, its enum values, its later fields.
struct ABIParameters {
    let loss: LossParameters
    /// Classes per block of the fused head; 0 picks the automatic rule.
    let headBlockSize: Int
    /// Where to write each row's number of hard negatives, if the caller asked.
    let hardNegatives: UnsafeMutablePointer<Int64>?
    /// Where to write each row's target cosine, if the caller asked (since 0.3).
    let targetCosines: UnsafeMutablePointer<Double>?

    /// The size of version 0.1's amm_params (up to and including ignore_index): the smallest
    /// struct_size this library accepts. Later fields take their defaults when the caller's
    /// struct_size does not cover them.
    static let minimumSize = MemoryLayout<amm_params>.offset(of: \amm_params.ignore_index)!
        + MemoryLayout<Int64>.size

    /// The end of every field after the 0.1 ones, in order of offset.
    private static let laterFieldEnds: [Int] = [
        MemoryLayout<amm_params>.offset(of: \amm_params.head_block_size)! + MemoryLayout<Int64>.size,
        MemoryLayout<amm_params>.offset(of: \amm_params.hard_negatives)!
            + MemoryLayout<UnsafeMutablePointer<Int64>?>.size,
        MemoryLayout<amm_params>.offset(of: \amm_params.margin_gradient)!
            + MemoryLayout<Int32>.size,
        MemoryLayout<amm_params>.offset(of: \amm_params.target_cosines)!
            + MemoryLayout<UnsafeMutablePointer<Double>?>.size,
    ]

    /// How many bytes of the caller's struct to read: up to the end of the last field that
    /// struct_size covers wholly, so that a field it covers in part keeps its default instead of
    /// being spliced from the caller's low bytes and the default's high bytes.
    static func coveredBytes(structSize size: Int) -> Int {
        laterFieldEnds.last { $0 <= size } ?? minimumSize
    }

    /// The defaults, as `amm_params_init` writes them.
    static var defaults: amm_params {
        let d = LossParameters()
        return amm_params(
            struct_size: UInt32(MemoryLayout<amm_params>.size), scale: d.scale,
            margin: d.margin, hard_margin: d.hardMargin, target: d.target.rawValue,
            hard: d.hard.rawValue, reduction: d.reduction.rawValue,
            num_threads: Int32(d.numThreads), ignore_index: d.ignoreIndex, head_block_size: 0,
            hard_negatives: nil, margin_gradient: d.marginGradient.rawValue, target_cosines: nil)
    }

    /// Reads `*p` as far as its struct_size reaches (later fields keep their defaults), then
    /// checks every field in the order the header documents; head_block_size only when
    /// `checkingHeadBlockSize` (the loss functions never read it, and accept any value there).
    init(reading p: UnsafePointer<amm_params>?, checkingHeadBlockSize: Bool) throws(ABIError) {
        guard let p else { throw ABIError(AMM_ERR_NULL_POINTER, "params is NULL") }
        // struct_size is the first field of every version: read it before the rest.
        let size = Int(UnsafeRawPointer(p).load(as: UInt32.self))
        guard size >= Self.minimumSize else {
            throw ABIError(AMM_ERR_PARAM, "params->struct_size = \(size) is too small: must be "
                + ">= \(Self.minimumSize) (call amm_params_init first)")
        }
        var raw = Self.defaults
        _ = withUnsafeMutableBytes(of: &raw) {
            memcpy($0.baseAddress!, p, Self.coveredBytes(structSize: size))
        }
        guard let target = TargetKind(rawValue: raw.target) else {
            throw ABIError(AMM_ERR_PARAM, "params->target = \(raw.target) is unknown: must be "
                + "AMM_TARGET_ARC (0) or AMM_TARGET_COS (1)")
        }
        guard let hard = HardKind(rawValue: raw.hard) else {
            throw ABIError(AMM_ERR_PARAM, "params->hard = \(raw.hard) is unknown: must be "
                + "AMM_HARD_AMM (0), AMM_HARD_MV_FIXED (1), AMM_HARD_MV_ADAPTIVE (2), "
                + "AMM_HARD_NONE (3) or AMM_HARD_CURRICULAR (4)")
        }
        guard let reduction = Reduction(rawValue: raw.reduction) else {
            throw ABIError(AMM_ERR_PARAM, "params->reduction = \(raw.reduction) is unknown: must "
                + "be AMM_REDUCTION_MEAN (0), AMM_REDUCTION_SUM (1) or AMM_REDUCTION_NONE (2)")
        }
        guard let marginGradient = MarginGradient(rawValue: raw.margin_gradient) else {
            throw ABIError(AMM_ERR_PARAM, "params->margin_gradient = \(raw.margin_gradient) is "
                + "unknown: must be AMM_MARGIN_GRADIENT_EXACT (0) or "
                + "AMM_MARGIN_GRADIENT_STRAIGHT_THROUGH (1)")
        }
        loss = LossParameters(
            scale: raw.scale, margin: raw.margin, hardMargin: raw.hard_margin, target: target,
            hard: hard, reduction: reduction, ignoreIndex: raw.ignore_index,
            numThreads: Int(raw.num_threads), marginGradient: marginGradient)
        do {
            try loss.validate()
            if checkingHeadBlockSize { try HeadKernel.validateBlockSize(raw.head_block_size) }
        } catch { throw ABIError(error) }
        headBlockSize = Int(raw.head_block_size)
        hardNegatives = raw.hard_negatives
        targetCosines = raw.target_cosines
    }
}
