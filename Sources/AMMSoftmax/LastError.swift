#if canImport(Glibc)
import Glibc
#endif

/// The per-thread message behind `amm_last_error()`.
///
/// Each thread owns one heap C string, held in a pthread key whose destructor frees it when the
/// thread exits. A thread that never failed reads the static empty string.
enum LastError {
    /// The key, created once (Swift globals are initialised lazily and thread-safely).
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { free($0) }
        precondition(status == 0, "amm-softmax: pthread_key_create failed (\(status))")
        return key
    }()

    /// "" as a C string with static lifetime.
    private static let empty: StaticString = ""

    /// Replaces this thread's message (the previous one is freed).
    static func set(_ message: String) {
        let copy = strdup(message)  // nil on allocation failure: the thread then reads ""
        let old = pthread_getspecific(key)
        pthread_setspecific(key, copy)
        free(old)
    }

    /// This thread's message, valid until its next `set`.
    static var current: UnsafePointer<CChar> {
        if let message = pthread_getspecific(key) {
            return UnsafePointer(message.assumingMemoryBound(to: CChar.self))
        }
        return UnsafeRawPointer(empty.utf8Start).assumingMemoryBound(to: CChar.self)
    }
}
