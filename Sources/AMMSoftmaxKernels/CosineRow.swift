import AMMSoftmaxMath
import CVectorMath

/// Where the statistics pass (`RowKernel.statistics`) reads one row's cosines: memory of the
/// element type itself (`ElementCosines`), or 16-bit storage widened exactly to Float as it is
/// read (`HalfStorageCosines`).
///
/// Why: the one-pass loop, which takes nearly every element of a row, reads 16-bit storage
/// directly, so a 16-bit row is read once from the caller's memory and never written out
/// widened; only the blocks taken in two steps (the first and the target's) are widened into a
/// block buffer first (and every block of a row whose logits rise too far above the running
/// reference for the one-pass loop, and each stretch's last partial vector). Either way each
/// element is the same Float, so the results are the same bits as the Float pass on the
/// widened row.
public protocol CosineRow<Scalar> {
    associatedtype Scalar: LossScalar
    /// The cosine at `column`.
    func cosine(at column: Int) -> Scalar
    /// The `count` (<= RowKernel.blockSize) cosines from `start`: the row's own memory, or a
    /// widened copy valid until the next call.
    func block(from start: Int, count: Int) -> UnsafePointer<Scalar>
    /// How many of the `count` cosines from `start` are greater than `threshold`.
    func countGreater(than threshold: Scalar, from start: Int, count: Int) -> Int
    /// `T.exponentiateStretch` over the `count` (a multiple of the vector width) cosines from
    /// `start`, copying what it can of `copy` meanwhile (`copied`, in bytes).
    func exponentiateStretch(
        from start: Int, count: Int, scale: Scalar, reference: Scalar,
        negatives: NegativeLogit<Scalar>, weighted: UnsafeMutablePointer<Scalar>?,
        copy: StretchCopy?
    ) -> (nanCheck: Scalar.Vector, maximum: Scalar.Vector, sum: Double, copied: Int)
}

/// A row stored in its element type: every request is the memory itself.
public struct ElementCosines<Scalar: LossScalar>: CosineRow {
    public let base: UnsafePointer<Scalar>

    @inlinable
    public init(_ base: UnsafePointer<Scalar>) { self.base = base }

    @inlinable @inline(__always)
    public func cosine(at column: Int) -> Scalar { base[column] }

    @inlinable @inline(__always)
    public func block(from start: Int, count: Int) -> UnsafePointer<Scalar> { base + start }

    @inlinable
    public func countGreater(than threshold: Scalar, from start: Int, count: Int) -> Int {
        // An integer count, which the compiler vectorises.
        var hard = 0
        for j in start..<(start + count) where base[j] > threshold { hard += 1 }
        return hard
    }

    @inlinable @inline(__always)
    public func exponentiateStretch(
        from start: Int, count: Int, scale: Scalar, reference: Scalar,
        negatives: NegativeLogit<Scalar>, weighted: UnsafeMutablePointer<Scalar>?,
        copy: StretchCopy?
    ) -> (nanCheck: Scalar.Vector, maximum: Scalar.Vector, sum: Double, copied: Int) {
        Scalar.exponentiateStretch(base + start, count: count, scale: scale, reference: reference,
                                   negatives: negatives, weighted: weighted, copy: copy)
    }
}

/// A row of bfloat16 or float16 values, computed in Float.
public struct HalfStorageCosines: CosineRow {
    public typealias Scalar = Float
    public let base: UnsafePointer<UInt16>
    public let storage: HalfStorage
    /// RowKernel.blockSize Floats of scratch, for `block`.
    public let blockBuffer: UnsafeMutablePointer<Float>

    @inlinable
    public init(_ base: UnsafePointer<UInt16>, storage: HalfStorage,
                blockBuffer: UnsafeMutablePointer<Float>) {
        self.base = base
        self.storage = storage
        self.blockBuffer = blockBuffer
    }

    @inlinable @inline(__always)
    public func cosine(at column: Int) -> Float { storage.widen(base[column]) }

    @inlinable
    public func block(from start: Int, count: Int) -> UnsafePointer<Float> {
        amm_widen_row(base + start, blockBuffer, count, storage.rawValue)
        return UnsafePointer(blockBuffer)
    }

    /// A block at a time through the block buffer.
    @inlinable
    public func countGreater(than threshold: Float, from start: Int, count: Int) -> Int {
        var hard = 0
        var j = start
        while j < start + count {
            let size = Swift.min(RowKernel<Float>.blockSize, start + count - j)
            hard += ElementCosines(block(from: j, count: size))
                .countGreater(than: threshold, from: 0, count: size)
            j += size
        }
        return hard
    }

    @inlinable @inline(__always)
    public func exponentiateStretch(
        from start: Int, count: Int, scale: Float, reference: Float,
        negatives: NegativeLogit<Float>, weighted: UnsafeMutablePointer<Float>?,
        copy: StretchCopy?
    ) -> (nanCheck: SIMD16<Float>, maximum: SIMD16<Float>, sum: Double, copied: Int) {
        negatives.exponentiateStretch(base + start, storage: storage, count: count, scale: scale,
                                      reference: reference, weighted: weighted, copy: copy)
    }
}
