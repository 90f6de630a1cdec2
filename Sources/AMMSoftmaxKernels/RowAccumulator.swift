import AMMSoftmaxMath
import CPlatform
import RealModule

/// The running log-sum-exp of one row's negative logits, fed cosines a block or a stretch of
/// blocks at a time: the statistics pass of `RowKernel` walks a row with it, and the fused head
/// feeds it the blocks of classes it computes.
///
/// Two ways in. `addStretch` takes any number of blocks in one pass against the reference
/// known so far (below). `add` takes one block in two steps, which the first block of a row
/// needs (no reference yet), the target's block too (the target is not a negative), and which
/// the head uses throughout: the logits z_j = s g(c_j) into a buffer -- first s c_j for every
/// vector, then, for the vectors that hold a hard negative, s g(c_j) computed again in a
/// separate loop -- and their maximum; the reference r (the largest negative logit so far)
/// raised if the block's maximum is above it, rescaling the running sum once; then
/// e_j = exp(z_j - r) added up, and, when `slopes` is given, e_j dg/dc_j left in the buffer
/// (the gradient's numerators). A partial last vector is kept in registers, padded with -inf,
/// and written only where it exists. The results do not depend on which vectors took which
/// loop: an easy lane comes out of the mining arithmetic as s c_j and dg/dc_j = 1, the same
/// bits.
public struct RowAccumulator<T: LossScalar> {
    public let negatives: NegativeLogit<T>
    public let scale: T
    /// The largest negative logit so far.
    public var reference: T { _reference }
    /// The sum of exp(z_j - reference) over the negatives so far.
    public var sum: Double { _sum }
    /// Whether every cosine added so far was finite.
    public var allFinite: Bool { !_nanCheck.sum().isNaN }

    @usableFromInline var _reference = -T.infinity
    @usableFromInline var _sum = 0.0
    @usableFromInline var _nanCheck = T.Vector()  // sums c - c: NaN once a c is NaN or infinite

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
    /// Whether most vectors of the last block held a hard negative: the next block then goes
    /// through the mining arithmetic whole, in one loop (`mineEveryVector`), instead of a
    /// first loop that assumes easy negatives and a second over the list of hard vectors.
    /// Either way gives the same bits: an easy lane comes out of the mining arithmetic as s c
    /// and dg/dc = 1.
    @usableFromInline var _dense = false

    @inlinable @inline(__always)
    static var width: Int { T.Vector.scalarCount }

    /// Adds `count` (<= RowKernel.blockSize) cosines.
    ///
    /// - Parameters:
    ///   - target: the target's column relative to `cosines`; outside [0, count) if the target
    ///     is not in this block. It is not a negative: it contributes nothing (0 in `buffer`).
    ///   - buffer: `count` values of scratch; with `slopes`, left holding e_j dg/dc_j (0 at the
    ///     target).
    ///   - slopes: nil for the loss alone; else scratch for dg/dc: `count` values rounded up
    ///     to a whole vector (the last, partial vector is stored whole; RowKernel.blockSize
    ///     values always suffice).
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
        // 1. Every whole vector's logits as if all its negatives were easy (z = s c), noting the
        //    vectors that hold a hard negative; then those vectors recomputed, out of line
        //    (`applyMining`), so that this loop stays a few instructions per vector.
        let whole = count / width * width
        let scales = T.Vector(repeating: scale)
        // (Plain while loops and locals declared inside the closure: a captured variable, or a
        // stored property, stays in memory, since the stores to `buffer` might alias it.)
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: K.blockSize / width) { list in
            let mined = list.baseAddress!
            var minedCount = 0
            var nanCheck = T.Vector()
            var wholeMax: T.Vector? = nil  // the whole vectors' maximum, when a loop took it
            var j = 0
            // The next block's cosines are requested a block ahead (one line a vector), sooner
            // than the hardware prefetcher alone asks for them.
            if negatives.kind == .none {
                while j < whole {
                    amm_prefetch(cosines + j + K.blockSize)
                    if slopes != nil { amm_prefetch_for_write(buffer + j + K.blockSize) }
                    let c = K.load(cosines + j)
                    nanCheck += c - c
                    K.store(c * scales, buffer + j)
                    j &+= width
                }
            } else if _dense {
                let (flagged, blockNanCheck, largest) = Self.mineEveryVector(
                    negatives, scales: scales, cosines: cosines, count: whole, logits: buffer,
                    slopes: slopes)
                nanCheck += blockNanCheck
                wholeMax = largest
                _dense = 4 * flagged >= 3 * (whole / width)
                minedCount = -1  // every vector: `exponentiate` applies every slope
                j = whole
            } else {
                let threshold = T.Vector(repeating: negatives.threshold)
                while j < whole {
                    amm_prefetch(cosines + j + K.blockSize)
                    if slopes != nil { amm_prefetch_for_write(buffer + j + K.blockSize) }
                    let c = K.load(cosines + j)
                    nanCheck += c - c
                    K.store(c * scales, buffer + j)
                    mined[minedCount] = j
                    minedCount &+= T.vectorAny(c, greaterThan: threshold) ? 1 : 0
                    j &+= width
                }
                if minedCount > 0 {
                    Self.applyMining(negatives, scales: scales, cosines: cosines, vectors: mined,
                                     count: minedCount, logits: buffer, slopes: slopes)
                }
                _dense = 4 * minedCount >= 3 * (whole / width)
            }
            // The partial last vector stays in registers, padded with -inf.
            var tail = T.Vector(repeating: -T.infinity)
            if whole < count {
                let c = K.loadPartial(cosines + whole, count: count - whole)
                nanCheck += c - c
                let z: T.Vector
                if let slopes {
                    let (g, dg) = negatives.valuesAndDerivatives(c)
                    K.store(dg, slopes + whole)
                    z = g * scale
                } else {
                    z = negatives.values(c) * scale
                }
                for k in 0..<(count - whole) { tail[k] = z[k] }
            }
            _nanCheck += nanCheck
            // The target is not a negative: take it out. Then the block's maximum.
            if target >= 0, target < count {
                if target < whole { buffer[target] = -T.infinity }
                else { tail[target - whole] = -T.infinity }
            }
            var blockMax = tail
            if let wholeMax, !(target >= 0 && target < whole) {
                blockMax = T.vectorMaximum(blockMax, wholeMax)
            } else {
                j = 0
                while j < whole {
                    blockMax = T.vectorMaximum(blockMax, K.load(buffer + j))
                    j += width
                }
            }
            return exponentiate(count: count, whole: whole, blockMax: blockMax, tail: tail,
                                buffer: buffer, slopes: slopes, mined: mined,
                                minedCount: minedCount)
        }
    }

    // MARK: One pass against the running reference

    /// How far a stretch's largest logit may exceed the reference it was exponentiated against
    /// in `addStretch`: e^40 = 2.4e17, so that the exponentials, their partial sums and
    /// e_j dg/dc_j (|dg/dc| <= 1e7) stay far inside Float's range.
    @inlinable @inline(__always)
    static var headroom: T { 40 }

    /// Adds `count` cosines (any number of blocks, none holding the target) in one pass, once
    /// a reference r is known: each logit is exponentiated against r as soon as it is computed,
    /// not against the maximum of its block, which `add` needs a pass to find. Afterwards r is
    /// raised to the stretch's maximum if that is above it, rescaling the running sum. With
    /// `weighted` (`count` values), e_j dg/dc_j is stored there, relative to r.
    ///
    /// Returns r, the reference of every exponential of the stretch; nil, with the accumulator
    /// unchanged, if no reference is known yet or the stretch's largest logit exceeds r by more
    /// than `headroom` (the caller then adds the stretch block by block; `stream`'s copy has
    /// progressed either way, which changes nothing but when its bytes are written).
    ///
    /// The loop is `T.exponentiateStretch` (CVectorMath, software-pipelined). The results agree
    /// with `add` block by block to rounding: each exponential is the same number up to its
    /// reference, and the sums run in another order.
    @inlinable
    public mutating func addStretch(
        _ cosines: UnsafePointer<T>, count: Int, weighted: UnsafeMutablePointer<T>?,
        stream: UnsafeMutablePointer<GradientStream>? = nil
    ) -> T? {
        addStretch(ElementCosines(cosines), from: 0, count: count, weighted: weighted,
                   stream: stream)
    }

    /// `addStretch` over the `count` cosines of `row` from column `start`, wherever the row
    /// stores them (`CosineRow`).
    @inlinable
    public mutating func addStretch<Row: CosineRow>(
        _ row: Row, from start: Int, count: Int, weighted: UnsafeMutablePointer<T>?,
        stream: UnsafeMutablePointer<GradientStream>? = nil
    ) -> T? where Row.Scalar == T {
        typealias K = RowKernel<T>
        guard _reference > -T.infinity else { return nil }
        let width = Self.width
        let whole = count / width * width
        let reference = _reference
        var (nanCheck, maximum, sum, copied) = row.exponentiateStretch(
            from: start, count: whole, scale: scale, reference: reference, negatives: negatives,
            weighted: weighted, copy: stream?.pointee.pending)
        stream?.pointee.advance(by: copied)
        if whole < count {  // the partial last vector, padded with -inf
            let c = K.loadPartial(row.block(from: start + whole, count: count - whole),
                                  count: count - whole)
            nanCheck += c - c
            // dg/dc only for a gradient; the values are the same bits either way.
            let (g, dg) = weighted == nil
                ? (negatives.values(c), T.Vector(repeating: 1)) : negatives.valuesAndDerivatives(c)
            let full = g * scale
            var z = T.Vector(repeating: -T.infinity)
            for k in 0..<(count - whole) { z[k] = full[k] }
            maximum = T.vectorMaximum(maximum, z)
            let e = T.vectorExp(z - T.Vector(repeating: reference))
            sum += Double(e.sum())
            if let weighted {
                let product = e * dg
                for k in 0..<(count - whole) { weighted[whole + k] = product[k] }
            }
        }
        var top = maximum[0]
        for lane in 1..<width where maximum[lane] > top { top = maximum[lane] }
        guard !(top - reference > Self.headroom) else { return nil }
        if countsHardNegatives {
            _hard += row.countGreater(than: negatives.threshold, from: start, count: count)
        }
        _nanCheck += nanCheck
        _sum += sum
        if top > reference {
            _sum *= Double.exp(Double(reference) - Double(top))
            _reference = top
        }
        return reference
    }

    /// Steps 2 and 3 of `add`: the reference, the block's exponentials and their sum.
    @inlinable @inline(__always)
    mutating func exponentiate(
        count: Int, whole: Int, blockMax: T.Vector, tail: T.Vector,
        buffer: UnsafeMutablePointer<T>, slopes: UnsafeMutablePointer<T>?,
        mined: UnsafePointer<Int>, minedCount: Int
    ) -> T {
        typealias K = RowKernel<T>
        let width = Self.width
        // 2. Raise the reference if needed, then exponentiate and add the block.
        // The largest lane, by a select chain: the standard library's max() compares lane by
        // lane with branches (NaN rules), which mispredicted on every block. A NaN here
        // cannot matter: `allFinite` reports the row whatever the reference becomes.
        var top = blockMax[0]
        for lane in 1..<width where blockMax[lane] > top { top = blockMax[lane] }
        if top > _reference {
            _sum *= Double.exp(Double(_reference) - Double(top))
            _reference = top
        }
        guard top > -T.infinity else {  // only the target in this block
            if slopes != nil { buffer.update(repeating: 0, count: count) }
            return _reference
        }
        let shift = T.Vector(repeating: _reference)
        var blockSum: T.Vector
        if slopes == nil {
            blockSum = Self.exponentials(buffer, count: whole, shift: shift, store: false,
                                         weights: nil)
        } else if minedCount < 0 {
            // dg/dc is 1 but in the vectors holding a hard negative; here that is all of them.
            blockSum = Self.exponentials(buffer, count: whole, shift: shift, store: true,
                                         weights: slopes)
        } else {
            blockSum = Self.exponentials(buffer, count: whole, shift: shift, store: true,
                                         weights: nil)
            for m in 0..<minedCount {
                let j = mined[m]
                K.store(K.load(buffer + j) * K.load(slopes! + j), buffer + j)
            }
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

    /// The sum of e_j = exp(z_j - shift) over `count` (whole vectors of) logits in `buffer`;
    /// with `store`, e_j goes back into `buffer`, times `weights[j]` if given. Four vectors an
    /// iteration, added in order: their exponentials' dependency chains overlap better than the
    /// out-of-order window alone manages. The flags are constants at each call, so each call
    /// compiles to its own loop, with no test of them inside.
    @inlinable @inline(__always)
    static func exponentials(
        _ buffer: UnsafeMutablePointer<T>, count: Int, shift: T.Vector, store: Bool,
        weights: UnsafePointer<T>?
    ) -> T.Vector {
        typealias K = RowKernel<T>
        let width = Self.width
        var sum = T.Vector()
        var k = 0
        while k + 4 * width <= count {
            let e0 = T.vectorExp(K.load(buffer + k) - shift)
            let e1 = T.vectorExp(K.load(buffer + k + width) - shift)
            let e2 = T.vectorExp(K.load(buffer + k + 2 * width) - shift)
            let e3 = T.vectorExp(K.load(buffer + k + 3 * width) - shift)
            sum += e0
            sum += e1
            sum += e2
            sum += e3
            if store {
                if let weights {
                    K.store(e0 * K.load(weights + k), buffer + k)
                    K.store(e1 * K.load(weights + k + width), buffer + k + width)
                    K.store(e2 * K.load(weights + k + 2 * width), buffer + k + 2 * width)
                    K.store(e3 * K.load(weights + k + 3 * width), buffer + k + 3 * width)
                } else {
                    K.store(e0, buffer + k)
                    K.store(e1, buffer + k + width)
                    K.store(e2, buffer + k + 2 * width)
                    K.store(e3, buffer + k + 3 * width)
                }
            }
            k += 4 * width
        }
        while k < count {
            let e = T.vectorExp(K.load(buffer + k) - shift)
            sum += e
            if store { K.store(weights.map { e * K.load($0 + k) } ?? e, buffer + k) }
            k += width
        }
        return sum
    }

    /// Recomputes the logits (and, with `slopes`, dg/dc) of the `count` whole vectors of the
    /// block that start at the offsets `vectors`, each holding a hard negative. Out of line, and
    /// branch-free inside but for the variant.
    @inlinable @inline(never)
    static func applyMining(
        _ negatives: NegativeLogit<T>, scales: T.Vector, cosines: UnsafePointer<T>,
        vectors: UnsafePointer<Int>, count: Int, logits: UnsafeMutablePointer<T>,
        slopes: UnsafeMutablePointer<T>?
    ) {
        typealias K = RowKernel<T>
        if let slopes {
            for m in 0..<count {
                let j = vectors[m]
                let (g, dg) = negatives.minedValuesAndDerivatives(K.load(cosines + j))
                K.store(g * scales, logits + j)
                K.store(dg, slopes + j)
            }
        } else {
            for m in 0..<count {
                let j = vectors[m]
                K.store(negatives.minedValues(K.load(cosines + j)) * scales, logits + j)
            }
        }
    }

    /// The dense form of step 1: every whole vector (`count` values) through the mining
    /// arithmetic, logits into `logits` and, with `slopes`, dg/dc into `slopes`. Returns how
    /// many vectors held a hard negative, the NaN check's sum, and the logits' lane-wise
    /// maximum (the block's maximum without a pass of its own, unless the target is among
    /// them).
    @inlinable @inline(never)
    static func mineEveryVector(
        _ negatives: NegativeLogit<T>, scales: T.Vector, cosines: UnsafePointer<T>, count: Int,
        logits: UnsafeMutablePointer<T>, slopes: UnsafeMutablePointer<T>?
    ) -> (flagged: Int, nanCheck: T.Vector, maximum: T.Vector) {
        typealias K = RowKernel<T>
        let width = T.Vector.scalarCount
        let threshold = T.Vector(repeating: negatives.threshold)
        var flagged = 0
        var nanCheck = T.Vector()
        var maximum = T.Vector(repeating: -T.infinity)
        var j = 0
        if let slopes {
            while j < count {
                amm_prefetch(cosines + j + K.blockSize)
                amm_prefetch_for_write(logits + j + K.blockSize)
                let c = K.load(cosines + j)
                nanCheck += c - c
                flagged &+= T.vectorAny(c, greaterThan: threshold) ? 1 : 0
                let (g, dg) = negatives.minedValuesAndDerivatives(c)
                let z = g * scales
                maximum = T.vectorMaximum(maximum, z)
                K.store(z, logits + j)
                K.store(dg, slopes + j)
                j &+= width
            }
        } else {
            while j < count {
                amm_prefetch(cosines + j + K.blockSize)
                let c = K.load(cosines + j)
                nanCheck += c - c
                flagged &+= T.vectorAny(c, greaterThan: threshold) ? 1 : 0
                let z = negatives.minedValues(c) * scales
                maximum = T.vectorMaximum(maximum, z)
                K.store(z, logits + j)
                j &+= width
            }
        }
        return (flagged, nanCheck, maximum)
    }
}
