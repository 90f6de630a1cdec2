import AMMSoftmaxMath

/// A finished gradient row on its way from a scratch row to the caller's array, written with
/// streaming (non-temporal) stores a piece at a time while the next row's statistics pass runs.
///
/// Why: a forward_backward call writes as many bytes as it reads, and written through the
/// cache every line of the gradient is first read from memory (the store's "read for
/// ownership"), so the call would move three bytes for every two it must; streaming stores skip
/// that read. Written all at once they stall the core until memory has taken them, so each row
/// goes out while the next row's statistics pass runs: four lines an iteration inside its
/// one-pass loop (RowAccumulator.addStretch), and a block's worth after each block it takes
/// the two-pass way; whatever is left, at the end.
///
/// The bytes are copied unchanged: the results are the same bits as without streaming. The
/// destination's partial 64-byte lines at either end get ordinary stores. The owner calls
/// `T.streamFence()` once its rows are done.
public struct GradientStream<T: LossScalar> {
    @usableFromInline let source: UnsafePointer<T>
    @usableFromInline let destination: UnsafeMutablePointer<T>
    @usableFromInline let count: Int
    /// The next element to copy; piece boundaries fall on 64-byte lines of the destination.
    @usableFromInline var next: Int

    /// A stream of `count` elements from `source` to `destination`, which must not overlap.
    @inlinable
    public init(from source: UnsafePointer<T>, to destination: UnsafeMutablePointer<T>,
                count: Int) {
        self.source = source
        self.destination = destination
        self.count = count
        // The elements before the destination's first 64-byte boundary: ordinary stores.
        let misalignment = Int(bitPattern: UnsafeRawPointer(destination)) & 63
        let head = misalignment == 0 ? 0
            : Swift.min((64 - misalignment) / MemoryLayout<T>.stride, count)
        destination.update(from: source, count: head)
        next = head
    }

    /// Whether every element has been copied.
    @inlinable public var isFinished: Bool { next >= count }

    /// Copies the next piece (`RowKernel.blockSize` elements, fewer at the end).
    @inlinable
    public mutating func copyPiece() {
        copy(upTo: Swift.min(count, next + RowKernel<T>.blockSize))
    }

    /// What is left, for the one-pass loop to copy while it runs (`RowAccumulator.addStretch`).
    @inlinable
    public var pending: StretchCopy<T> {
        StretchCopy(from: source + next, to: destination + next, count: count - next)
    }

    /// Records `copied` more elements as copied (by the one-pass loop).
    @inlinable
    public mutating func advance(by copied: Int) { next += copied }

    /// Copies everything left.
    @inlinable
    public mutating func finish() { copy(upTo: count) }

    @inlinable
    mutating func copy(upTo end: Int) {
        let width = T.Vector.scalarCount
        var j = next
        while j + width <= end {
            T.vectorStream(UnsafeRawPointer(source + j).loadUnaligned(as: T.Vector.self),
                           to: destination + j)
            j += width
        }
        if end == count, j < end {  // the partial line at the end
            (destination + j).update(from: source + j, count: end - j)
            j = end
        }
        next = j
    }
}
