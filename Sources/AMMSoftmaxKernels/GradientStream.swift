import AMMSoftmaxMath
import CVectorMath

/// A finished gradient row on its way from a scratch row to the caller's array, written with
/// streaming (non-temporal) stores a piece at a time while the next row's statistics pass runs.
///
/// Why: a forward_backward call writes as many bytes as it reads, and written through the
/// cache every line of the gradient is first read from memory (the store's "read for
/// ownership"), so the call would move three bytes for every two it must; streaming stores skip
/// that read. Written all at once they stall the core until memory has taken them, so each row
/// goes out while the next row's statistics pass runs: inside its one-pass loop
/// (RowAccumulator.addStretch) as many bytes an iteration as the gradient of the elements the
/// loop consumes (four lines for Float and Double, two for 16-bit storage), a block's worth
/// after each block it takes
/// the two-pass way; whatever is left, at the end.
///
/// The bytes are copied unchanged (whatever element type they hold: Float, Double, or the 16-bit
/// storage of bf16 and f16 gradients): the results are the same bits as without streaming. The
/// destination's partial 64-byte lines at either end get ordinary stores. The owner calls
/// `amm_store_fence()` (`T.streamFence()`) once its rows are done.
public struct GradientStream {
    @usableFromInline let source: UnsafeRawPointer
    @usableFromInline let destination: UnsafeMutableRawPointer
    @usableFromInline let bytes: Int
    /// What `copyPiece` copies: a block's worth (RowKernel.blockSize elements).
    public let pieceBytes: Int
    /// The next byte to copy; piece boundaries fall on 64-byte lines of the destination.
    @usableFromInline var next: Int

    /// A stream of `count` elements from `source` to `destination`, which must not overlap.
    @inlinable
    public init<Element>(from source: UnsafePointer<Element>,
                         to destination: UnsafeMutablePointer<Element>, count: Int) {
        self.init(from: UnsafeRawPointer(source), to: UnsafeMutableRawPointer(destination),
                  count: count, elementBytes: MemoryLayout<Element>.stride)
    }

    /// A stream of `count` elements of `elementBytes` bytes each (the element type's size
    /// sets the piece, a block's worth of elements) from `source` to `destination`, which must
    /// not overlap; `destination` aligned to the element size.
    @inlinable
    public init(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer,
                count: Int, elementBytes: Int) {
        self.source = source
        self.destination = destination
        bytes = count * elementBytes
        pieceBytes = Int(AMM_ROW_BLOCK_SIZE) * elementBytes
        // The bytes before the destination's first 64-byte boundary (whole elements, for a
        // destination aligned to its element size): ordinary stores.
        let misalignment = Int(bitPattern: UnsafeRawPointer(destination)) & 63
        let head = misalignment == 0 ? 0 : Swift.min(64 - misalignment, bytes)
        destination.copyMemory(from: source, byteCount: head)
        next = head
    }

    /// Whether every element has been copied.
    @inlinable public var isFinished: Bool { next >= bytes }

    /// Copies the next piece (a block's worth, less at the end).
    @inlinable
    public mutating func copyPiece() {
        copy(upTo: Swift.min(bytes, next + pieceBytes))
    }

    /// What is left, for the one-pass loop to copy while it runs (`RowAccumulator.addStretch`).
    @inlinable
    public var pending: StretchCopy {
        StretchCopy(from: source + next, to: destination + next, bytes: bytes - next)
    }

    /// Records `copied` more bytes as copied (by the one-pass loop).
    @inlinable
    public mutating func advance(by copied: Int) { next += copied }

    /// Copies everything left.
    @inlinable
    public mutating func finish() { copy(upTo: bytes) }

    @inlinable
    mutating func copy(upTo end: Int) {
        var j = next
        while j + 64 <= end {
            amm_stream_line(source + j, destination + j)
            j += 64
        }
        if end == bytes, j < end {  // the partial line at the end
            (destination + j).copyMemory(from: source + j, byteCount: end - j)
            j = end
        }
        next = j
    }
}
