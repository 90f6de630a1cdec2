#if canImport(Glibc)
import Glibc
#endif
import AMMSoftmaxMath

/// Scratch memory of a call's lifetime for the head's large buffers (kept cosines, blocks):
/// mapped directly and, where the kernel allows it (transparent huge pages in `madvise` mode,
/// Linux's default), backed by 2 MiB pages, because the first touch of a fresh mapping costs a
/// page fault per page: 24,576 of them for 96 MiB of 4 KiB pages, 48 with huge pages.
struct LargeBuffer<T> {
    let pointer: UnsafeMutablePointer<T>
    private let bytes: Int
    private let mapped: Bool

    /// - Throws: `.allocation` when the memory cannot be had (a trap would kill the host).
    init(capacity: Int) throws(LossError) {
        let size = Swift.max(capacity, 1) * MemoryLayout<T>.stride
        #if canImport(Glibc)
        if size >= 4 << 20,
           let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                              -1, 0),
           address != MAP_FAILED {
            _ = madvise(address, size, MADV_HUGEPAGE)  // advice only: ignored where unsupported
            pointer = address.bindMemory(to: T.self, capacity: Swift.max(capacity, 1))
            bytes = size
            mapped = true
            return
        }
        #endif
        var raw: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&raw, 64, size) == 0, let raw else {
            throw .allocation(bytes: size)
        }
        pointer = raw.bindMemory(to: T.self, capacity: Swift.max(capacity, 1))
        bytes = size
        mapped = false
    }

    func release() {
        #if canImport(Glibc)
        if mapped {
            munmap(UnsafeMutableRawPointer(pointer), bytes)
            return
        }
        #endif
        free(pointer)
    }
}
