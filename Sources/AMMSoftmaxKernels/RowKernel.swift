import AMMSoftmaxMath
import CVectorMath
import RealModule

/// The loss of one row and its gradient, over SIMD vectors: the unit of work every kernel is
/// made of.
///
/// For row i with target y, z_y = s f(c_y) and z_j = s g(c_j) (j != y), and
/// loss_i = logsumexp_j z_j - z_y; the gradient is s (p_j - [j == y]) dz_j/dc_j, p = softmax(z).
///
/// Two passes, one exponential per element, one read of the row from memory:
/// 1. `statistics` walks the row (RowAccumulator). The first block of `blockSize` elements (4 or
///    8 KiB, in L1), and the block holding the target, go in two steps: the logits z_j into a
///    block buffer and their maximum, which raises the running reference r (the largest
///    negative logit so far, rescaling the running sum once); then e_j = exp(z_j - r), added
///    up. The blocks between go in one pass per stretch (`RowAccumulator.addStretch`): each
///    z_j exponentiated against the reference known so far, r raised at the end. For a
///    gradient, e_j dg/dc_j is stored in the gradient row (or a scratch row, when the caller
///    streams the gradient out), with the reference each block was exponentiated against.
/// 2. `writeGradient` turns them into gradients in place: p_j = e_j exp(r_block - max) / total,
///    one multiplication per element (the row is still in L2: a 100,000-class f32 row is
///    400 KB).
///
/// Every function here is `@inlinable`, so that the modules built for wider instruction sets
/// compile their own copy with their CPU flags. The vector width is fixed by `T.Vector`
/// whatever the instruction set, and the fused multiply-adds are named (CVectorMath), so the
/// AVX2 and AVX-512 builds compute the same bits; the baseline build, without FMA, may differ
/// from them in the last bits.
///
/// Precision: logits, exponentials and gradients are computed in T; the target logit, the
/// running sums and the row loss in Double. 1 - p_y is computed as (sum of negative
/// exponentials) / (total), never as 1 - p_y.
public enum RowKernel<T: LossScalar> {
    /// Elements per block: a multiple of the vector width. The C loops' constant, so that the
    /// two cannot differ.
    @inlinable public static var blockSize: Int { Int(AMM_ROW_BLOCK_SIZE) }

    /// The number of blocks a row of `columns` elements has (the size of `blockReferences`).
    @inlinable
    public static func blockCount(columns: Int) -> Int {
        // Rounded up without forming columns + blockSize - 1, which overflows near Int.max.
        columns / blockSize + (columns % blockSize == 0 ? 0 : 1)
    }

    @inlinable @inline(__always)
    static var width: Int { T.Vector.scalarCount }

    @inlinable @inline(__always)
    static func load(_ p: UnsafePointer<T>) -> T.Vector {
        UnsafeRawPointer(p).loadUnaligned(as: T.Vector.self)
    }

    @inlinable @inline(__always)
    static func store(_ v: T.Vector, _ p: UnsafeMutablePointer<T>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: T.Vector.self)
    }

    /// The first `count` (< width) values at p, the other lanes 0.
    @inlinable @inline(__always)
    static func loadPartial(_ p: UnsafePointer<T>, count: Int) -> T.Vector {
        var v = T.Vector()
        for k in 0..<count { v[k] = p[k] }
        return v
    }

    /// The statistics pass.
    ///
    /// - Parameters:
    ///   - weightedExponentials: nil for the loss alone; for a gradient, the gradient row
    ///     (`columns` values), which receives e_j dg/dc_j with e_j = exp(z_j - r_block)
    ///     (and 0 at the target), ready for `writeGradient`.
    ///   - blockReferences: with `weightedExponentials`, room for `blockCount(columns:)` values:
    ///     each block's r.
    ///   - countHardNegatives: whether to count the negatives mined as hard (statistics'
    ///     `hardNegatives`).
    ///   - stream: a previous row's gradient being streamed out (GradientStream): a step's
    ///     gradient an iteration inside the one-pass loop (four lines, two for 16-bit storage),
    ///     a block's worth after each block taken in two steps, and the rest at the end.
    /// - Returns: the row's statistics, or the first non-finite column.
    @inlinable
    public static func statistics(
        _ row: UnsafePointer<T>, columns: Int, label y: Int, parameters: LossParameters,
        weightedExponentials: UnsafeMutablePointer<T>?, blockReferences: UnsafeMutablePointer<T>?,
        countHardNegatives: Bool = false, stream: UnsafeMutablePointer<GradientStream>? = nil
    ) -> Result<RowStatistics<T>, NonFiniteValue> {
        statistics(ElementCosines(row), columns: columns, label: y, parameters: parameters,
                   weightedExponentials: weightedExponentials, blockReferences: blockReferences,
                   countHardNegatives: countHardNegatives, stream: stream)
    }

    /// The statistics pass over a row wherever it is stored (`CosineRow`): a 16-bit row gives
    /// the same results as its widened Float copy would.
    @inlinable
    public static func statistics<Row: CosineRow>(
        _ row: Row, columns: Int, label y: Int, parameters: LossParameters,
        weightedExponentials: UnsafeMutablePointer<T>?, blockReferences: UnsafeMutablePointer<T>?,
        countHardNegatives: Bool = false, stream: UnsafeMutablePointer<GradientStream>? = nil
    ) -> Result<RowStatistics<T>, NonFiniteValue> where Row.Scalar == T {
        defer { stream?.pointee.finish() }
        let cy = row.cosine(at: y)
        guard cy.isFinite else { return .failure(firstNonFinite(row, columns: columns)) }
        let target = TargetLogit(cosine: Double(cy), parameters: parameters)
        let negatives = NegativeLogit<T>(parameters, target: target)
        var accumulator = RowAccumulator(negatives: negatives, scale: T(parameters.scale),
                                         countsHardNegatives: countHardNegatives)
        // scratch: one block for the logits (loss alone) or for dg/dc (with a gradient).
        withUnsafeTemporaryAllocation(of: T.self, capacity: blockSize) { scratch in
            let scratch = scratch.baseAddress!
            var start = 0
            var block = 0
            var stretches = true
            while start < columns {
                let count = Swift.min(blockSize, columns - start)
                // Once the first block has set a reference, the blocks up to the target's (or
                // to the end) go in one pass; the target's block, and a stretch whose logits
                // rise too far above the reference, block by block.
                if stretches, !(y >= start && y < start + count) {
                    let end = y > start ? y / blockSize * blockSize : columns
                    if let reference = accumulator.addStretch(
                        row, from: start, count: end - start,
                        weighted: weightedExponentials.map { $0 + start }, stream: stream) {
                        let blocks = blockCount(columns: end - start)
                        for b in block..<(block + blocks) { blockReferences?[b] = reference }
                        start = end
                        block += blocks
                        continue
                    }
                    stretches = block == 0
                }
                let reference = accumulator.add(
                    row.block(from: start, count: count), count: count, target: y - start,
                    into: weightedExponentials.map { $0 + start } ?? scratch,
                    slopes: weightedExponentials == nil ? nil : scratch)
                blockReferences?[block] = reference
                stream?.pointee.copyPiece()
                start += count
                block += 1
            }
        }
        guard accumulator.allFinite else { return .failure(firstNonFinite(row, columns: columns)) }
        var statistics = RowStatistics(target: target, negatives: negatives,
                                       scale: parameters.scale,
                                       negativeMaximum: accumulator.reference,
                                       negativeSum: accumulator.sum)
        statistics.hardNegatives = accumulator.hardNegatives
        return .success(statistics)
    }

    /// The gradient of one segment of a row whose statistics are complete, computed from the
    /// cosines again (the fused head's second pass): `upstream * dloss_i/dcos_ij` for the
    /// `count` columns at `cosines`, into `out`; `target` is the target's column relative to
    /// the segment (outside [0, count) if it is not in it).
    @inlinable
    public static func writeGradientSegment(
        _ cosines: UnsafePointer<T>, count: Int, target: Int, statistics st: RowStatistics<T>,
        upstream: Double, into out: UnsafeMutablePointer<T>
    ) {
        let negatives = st.negatives
        let scale = T(st.scale)
        let shift = T.Vector(repeating: st.negativeMaximum)
        // p_j = exp(z_j - negativeMaximum) exp(negativeMaximum - maximum) / total.
        let factor = T(upstream * st.scale * st.probabilityFactor(reference: st.negativeMaximum))
        var j = 0
        while j < count {
            let partial = count - j < width
            let c = partial ? loadPartial(cosines + j, count: count - j) : load(cosines + j)
            let (g, dg) = negatives.valuesAndDerivatives(c)
            let gradient = T.vectorExp(g * scale - shift) * factor * dg
            if partial {
                for k in 0..<(count - j) { out[j + k] = gradient[k] }
                break
            }
            store(gradient, out + j)
            j += width
        }
        if target >= 0, target < count {
            out[target] = T(-upstream * st.scale * (st.negativeSum / st.total)
                            * st.target.derivative)
        }
    }

    /// The lowest column of a row known to hold a NaN or an infinity.
    @inlinable
    static func firstNonFinite<Row: CosineRow>(_ row: Row, columns: Int) -> NonFiniteValue
    where Row.Scalar == T {
        var j = 0
        while row.cosine(at: j).isFinite { j += 1 }
        return NonFiniteValue(column: j, value: Double(row.cosine(at: j)))
    }

    /// The gradient pass: turns the weighted exponentials left in `gradient` by `statistics`
    /// into `upstream * dloss_i/dcos_ij` for every j: one multiplication per element.
    /// `upstream` already holds the reduction's factor (1/count for mean).
    @inlinable
    public static func writeGradient(
        columns: Int, label y: Int, statistics st: RowStatistics<T>,
        blockReferences: UnsafePointer<T>, upstream: Double, gradient: UnsafeMutablePointer<T>
    ) {
        var start = 0
        var block = 0
        while start < columns {
            let count = Swift.min(blockSize, columns - start)
            let out = gradient + start
            // p_j = e_j exp(r_block - maximum) / total.
            let factor = T(upstream * st.scale
                           * st.probabilityFactor(reference: blockReferences[block]))
            let factors = T.Vector(repeating: factor)
            var j = 0
            while j + width <= count {
                store(load(out + j) * factors, out + j)
                j += width
            }
            while j < count {
                out[j] *= factor
                j += 1
            }
            start += count
            block += 1
        }
        // p_y - 1 = -(negative sum) / total, exact where p_y is close to 1.
        gradient[y] = T(-upstream * st.scale * (st.negativeSum / st.total)
                        * st.target.derivative)
    }
}

extension RowKernel where T == Float {
    /// `writeGradient` into 16-bit storage: the gradient formed in Float exactly as there (the
    /// weighted exponentials times each block's factor, the target's entry from the sums),
    /// then rounded once to `storage`, to nearest with ties to even, and written to `out`;
    /// `weighted` is read only. Returns the lowest column whose rounded value is an infinity or
    /// a NaN, or -1.
    @inlinable
    public static func writeGradient(
        columns: Int, label y: Int, statistics st: RowStatistics<Float>,
        blockReferences: UnsafePointer<Float>, upstream: Double,
        weightedExponentials weighted: UnsafePointer<Float>, storage: HalfStorage,
        into out: UnsafeMutablePointer<UInt16>
    ) -> Int {
        var start = 0
        var block = 0
        var firstBad = -1
        while start < columns {
            let count = Swift.min(blockSize, columns - start)
            let factor = Float(upstream * st.scale
                               * st.probabilityFactor(reference: blockReferences[block]))
            // The target's place holds 0 here and is written below.
            let bad = amm_scale_narrow_block(weighted + start, count, factor, out + start,
                                             storage.rawValue, y - start)
            if firstBad < 0, bad >= 0 { firstBad = start + bad }
            start += count
            block += 1
        }
        let target = Float(-upstream * st.scale * (st.negativeSum / st.total)
                           * st.target.derivative)
        out[y] = amm_narrow_one(target, storage.rawValue)
        let mask = UInt16(truncatingIfNeeded: amm_storage_exponent_mask(storage.rawValue))
        if out[y] & mask == mask, firstBad < 0 || y < firstBad { return y }
        return firstBad
    }
}

/// What the statistics pass learns about a row.
public struct RowStatistics<T: LossScalar> {
    public let target: TargetLogit
    public let negatives: NegativeLogit<T>
    /// s.
    public let scale: Double
    /// s f(c_y), in Double.
    public let targetLogit: Double
    /// The largest negative logit, and the largest logit of the row.
    public let negativeMaximum: T
    public let maximum: Double
    /// sum over j != y of exp(z_j - maximum), and exp(z_y - maximum).
    public let negativeSum: Double
    public let targetExp: Double
    /// The number of negatives mined as hard, when the pass was asked to count them (else 0).
    public var hardNegatives = 0

    /// The statistics of a row from its target, the largest negative logit and the sum of
    /// exp(z_j - negativeMaximum) over the negatives (as a RowAccumulator leaves them).
    @inlinable
    public init(target: TargetLogit, negatives: NegativeLogit<T>, scale: Double,
                negativeMaximum: T, negativeSum sumAtNegativeMaximum: Double) {
        self.target = target
        self.negatives = negatives
        self.scale = scale
        self.negativeMaximum = negativeMaximum
        targetLogit = scale * target.value
        maximum = Swift.max(Double(negativeMaximum), targetLogit)
        // With no negative (C = 1) the sum is 0 and the maximum -inf: nothing to rescale.
        let rescale = negativeMaximum > -T.infinity
            ? Double.exp(Double(negativeMaximum) - maximum) : 0
        negativeSum = sumAtNegativeMaximum * rescale
        targetExp = Double.exp(targetLogit - maximum)
    }

    /// The softmax denominator relative to the maximum.
    @inlinable public var total: Double { negativeSum + targetExp }

    /// exp(reference - maximum) / total: turns exp(z_j - reference) into p_j.
    @inlinable
    public func probabilityFactor(reference: T) -> Double {
        reference > -T.infinity ? Double.exp(Double(reference) - maximum) / total : 0
    }

    /// logsumexp(z) - z_y, computed as log1p when the target holds the maximum (a
    /// well-classified row), where it keeps relative precision in a tiny loss.
    /// Infinite when the target logit s f(c_y) is beyond Double's range: every caller reports
    /// such a row as overflowing (.overflow), instead of its gradient, inf - inf, being NaN.
    @inlinable public var loss: Double {
        guard targetLogit.isFinite else { return .infinity }
        if targetLogit >= maximum { return Double.log(onePlus: negativeSum) }
        // logsumexp >= z_y: a negative value is rounding (exp(z_y - maximum) underflowing
        // where the negatives' sum is 0, as inconsistent global statistics can make it). NaN
        // and infinities pass unchanged: they report an overflow.
        let loss = Double.log(total) + maximum - targetLogit
        return loss < 0 ? 0 : loss
    }
}

/// A NaN or infinity found in a row that is not ignored.
public struct NonFiniteValue: Error, Sendable {
    public let column: Int
    public let value: Double

    @inlinable
    public init(column: Int, value: Double) {
        self.column = column
        self.value = value
    }
}
