import AMMSoftmaxMath
import RealModule

/// The running log-sum-exp of one row's negative logits, fed one block of cosines at a time:
/// the statistics pass of `RowKernel` walks a row with it, and the fused head feeds it the
/// blocks of classes it computes.
///
/// For each block: the logits z_j = s g(c_j) into a buffer and their maximum; the reference r
/// (the largest negative logit so far) raised if the block's maximum is above it, rescaling the
/// running sum once; then e_j = exp(z_j - r) added up, and, when `slopes` is given, e_j dg/dc_j
/// left in the buffer (the gradient's numerators). A partial last vector is kept in registers, padded with -inf, and written
/// only where it exists.
public struct RowAccumulator<T: LossScalar> {
    public let negatives: NegativeLogit<T>
    public let scale: T
    /// The largest negative logit so far.
    public var reference: T { _reference }
    /// The sum of exp(z_j - reference) over the negatives so far.
    public var sum: Double { _sum }
    /// Whether every cosine added so far was finite.
    public var allFinite: Bool { !_poison.sum().isNaN }

    @usableFromInline var _reference = -T.infinity
    @usableFromInline var _sum = 0.0
    @usableFromInline var _poison = T.Vector()  // sums c - c: NaN once a c is NaN or infinite

    /// Whether `add` counts the hard negatives (only when asked: it costs a pass over the block).
    public let countsHardNegatives: Bool
    /// The number of negatives mined as hard so far (with `countsHardNegatives`).
    public var hardNegatives: Int { _hard }

    @inlinable
    public init(negatives: NegativeLogit<T>, scale: T, countsHardNegatives: Bool = false) {
        self.negatives = negatives
        self.scale = scale
        self.countsHardNegatives = countsHardNegatives
    }

    @usableFromInline var _hard = 0

    @inlinable @inline(__always)
    static var width: Int { T.Vector.scalarCount }

    /// Adds `count` (<= RowKernel.blockSize) cosines.
    ///
    /// - Parameters:
    ///   - target: the target's column relative to `cosines`; outside [0, count) if the target
    ///     is not in this block. It is not a negative: it contributes nothing (0 in `buffer`).
    ///   - buffer: `count` values of scratch; with `slopes`, left holding e_j dg/dc_j (0 at the
    ///     target).
    ///   - slopes: nil for the loss alone; else scratch for `count` values (dg/dc).
    /// - Returns: the reference the block's exponentials are relative to.
    @inlinable
    public mutating func add(
        _ cosines: UnsafePointer<T>, count: Int, target: Int,
        into buffer: UnsafeMutablePointer<T>, slopes: UnsafeMutablePointer<T>?
    ) -> T {
        typealias K = RowKernel<T>
        let width = Self.width
        if countsHardNegatives {
            // An integer count, which the compiler vectorises; the target is not a negative.
            let threshold = negatives.threshold
            var hard = 0
            for j in 0..<count where cosines[j] > threshold && j != target { hard += 1 }
            _hard += hard
        }
        // 1. The block's logits (and slopes), and their maximum.
        var blockMax = T.Vector(repeating: -T.infinity)
        var tail = T.Vector(repeating: -T.infinity)
        var j = 0
        while j < count {
            let partial = count - j < width
            let c = partial ? K.loadPartial(cosines + j, count: count - j) : K.load(cosines + j)
            _poison += c - c
            let z: T.Vector
            if let slopes {
                let (g, dg) = negatives.valuesAndDerivatives(c)
                K.store(dg, slopes + j)
                z = g * scale
            } else {
                z = negatives.values(c) * scale
            }
            if partial {
                for k in 0..<(count - j) { tail[k] = z[k] }
                break
            }
            K.store(z, buffer + j)
            blockMax = T.vectorMaximum(blockMax, z)
            j += width
        }
        let whole = j
        blockMax = T.vectorMaximum(blockMax, tail)
        // The target is not a negative: take it out.
        if target >= 0, target < count {
            if target < whole { buffer[target] = -T.infinity }
            else { tail[target - whole] = -T.infinity }
            blockMax = tail
            for k in stride(from: 0, to: whole, by: width) {
                blockMax = T.vectorMaximum(blockMax, K.load(buffer + k))
            }
        }
        // 2. Raise the reference if needed, then exponentiate and add the block.
        let top = blockMax.max()
        if top > _reference {
            _sum *= Double.exp(Double(_reference) - Double(top))
            _reference = top
        }
        guard top > -T.infinity else {  // only the target in this block
            if slopes != nil { buffer.update(repeating: 0, count: count) }
            return _reference
        }
        let shift = T.Vector(repeating: _reference)
        var blockSum = T.Vector()
        for k in stride(from: 0, to: whole, by: width) {
            let e = T.vectorExp(K.load(buffer + k) - shift)
            blockSum += e
            if let slopes { K.store(e * K.load(slopes + k), buffer + k) }
        }
        if whole < count {
            let e = T.vectorExp(tail - shift)
            blockSum += e
            if let slopes {
                let weighted = e * K.loadPartial(slopes + whole, count: count - whole)
                for k in 0..<(count - whole) { buffer[whole + k] = weighted[k] }
            }
        }
        _sum += Double(blockSum.sum())
        return _reference
    }
}
