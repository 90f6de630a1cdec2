import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Spreads rows over worker threads so that the result never depends on how many there are.
///
/// Rows are grouped into fixed blocks of `blockRows`; worker w of W takes blocks w, w + W, ...
/// in increasing order. Every row is computed by the same code whatever thread runs it, and
/// nothing is accumulated across rows here (the reductions sum per-row results afterwards, in
/// row order), so the output is bitwise identical for every thread count.
package enum RowParallel {
    /// Rows per block: small enough to balance 2 to 64 workers on a few hundred rows.
    static let blockRows = 4

    /// The number of cores this process may use (at least 1).
    package static var availableCores: Int {
        #if canImport(Glibc)
        return Swift.max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
        return 1
        #endif
    }

    /// Runs `body(row, worker)` for every row in [0, rows), on up to `threads` workers
    /// (0 = one per core). `body` returns false to stop its worker (used on the first error,
    /// since a worker's later rows all have larger indices). `worker` is in
    /// [0, workerCount(rows:columns:threads:)). `finish(worker)`, if given, runs on each
    /// worker's thread after its last row.
    package static func forEachRow(
        rows: Int, columns: Int, threads: Int, _ body: (_ row: Int, _ worker: Int) -> Bool,
        finish: ((_ worker: Int) -> Void)? = nil
    ) {
        let blocks = (rows + blockRows - 1) / blockRows
        let workers = workerCount(rows: rows, columns: columns, threads: threads)
        func work(_ worker: Int) {
            defer { finish?(worker) }
            var block = worker
            while block < blocks {
                let end = Swift.min(rows, (block + 1) * blockRows)
                for row in block * blockRows..<end {
                    if !body(row, worker) { return }
                }
                block += workers
            }
        }
        run(workers: workers, work)
    }

    /// The elements one worker should have at least: waking a thread costs about as much as
    /// computing a few thousand elements, so small calls stay on the calling thread.
    static let elementsPerWorker = 65_536

    /// Runs `body(item)` for every item in [0, count) on up to `threads` workers (0 = one per
    /// core), worker w taking items w, w + W, ...: for work already cut into pieces of a fixed
    /// size (the head's matrix products), where each item is worth a thread.
    package static func forEachItem(count: Int, threads: Int, _ body: (Int) -> Void) {
        let requested = threads == 0 ? availableCores : threads
        let workers = Swift.max(1, Swift.min(requested, count))
        func work(_ worker: Int) {
            for item in stride(from: worker, to: count, by: workers) { body(item) }
        }
        run(workers: workers, work)
    }

    /// work(0..<workers) on that many threads (the calling one when there is one worker).
    private static func run(workers: Int, _ work: (Int) -> Void) {
        if workers == 1 {
            work(0)
            return
        }
        // concurrentPerform wants a @Sendable closure; the callers' bodies write only to the
        // rows, items and worker slots they are given, which no two workers share, so handing
        // them over is safe.
        withoutActuallyEscaping(work) { work in
            let shared = UncheckedSendable(work)
            DispatchQueue.concurrentPerform(iterations: workers) { shared.value($0) }
        }
    }

    /// The worker count `forEachRow` uses for these arguments: size per-worker state with it.
    /// It never changes a result, only how the rows are shared.
    package static func workerCount(rows: Int, columns: Int, threads: Int) -> Int {
        let blocks = (rows + blockRows - 1) / blockRows
        let requested = threads == 0 ? availableCores : threads
        let worthwhile = rows.multipliedReportingOverflow(by: columns).partialValue
            / elementsPerWorker
        return Swift.max(1, Swift.min(requested, blocks, worthwhile))
    }
}

/// A value handed to other threads under a guarantee the compiler cannot check (stated where
/// it is made).
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
