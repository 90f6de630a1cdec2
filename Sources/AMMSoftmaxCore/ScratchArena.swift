#if canImport(Glibc)
import Glibc
#endif

/// The scratch memory of one call, allocated so that a failure is an error the caller can
/// handle (`LossError.allocation`, AMM_ERR_ALLOC, MemoryError) rather than a trap that kills
/// the host process, and released all at once when the call ends.
package final class ScratchArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    package init() {
        blocks.reserveCapacity(8)
    }

    /// Room for `count` values of T (at least one), aligned to 64 bytes, uninitialised.
    package func allocate<T>(_: T.Type, count: Int) throws(LossError)
        -> UnsafeMutablePointer<T>
    {
        let (bytes, overflow) = Swift.max(count, 1)
            .multipliedReportingOverflow(by: MemoryLayout<T>.stride)
        guard !overflow else { throw .allocation(bytes: Int.max) }
        var raw: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&raw, Swift.max(64, MemoryLayout<T>.alignment), bytes) == 0,
              let raw
        else { throw .allocation(bytes: bytes) }
        blocks.append(raw)
        return raw.bindMemory(to: T.self, capacity: Swift.max(count, 1))
    }

    /// a * b elements, or `.allocation` when the product does not fit an Int (such a buffer
    /// could never be had).
    package static func count(_ a: Int, times b: Int) throws(LossError) -> Int {
        let (count, overflow) = a.multipliedReportingOverflow(by: b)
        guard !overflow else { throw .allocation(bytes: Int.max) }
        return count
    }

    /// A buffer of `count` values, as `allocate` makes it.
    package func buffer<T>(_: T.Type, count: Int) throws(LossError)
        -> UnsafeMutableBufferPointer<T>
    {
        UnsafeMutableBufferPointer(start: try allocate(T.self, count: count), count: count)
    }

    /// Frees every block (also done when the arena goes away).
    package func release() {
        for block in blocks { free(block) }
        blocks.removeAll()
    }

    deinit {
        release()
    }
}
