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

    /// work(0..<workers): worker 0 on the calling thread, each other on a thread of its own,
    /// joined before this returns. A thread that cannot be started (no memory, a thread limit)
    /// costs speed, never the result or a hang: its worker then runs on the calling thread.
    /// No thread outlives the call, so nothing is held across a fork.
    private static func run(workers: Int, _ work: (Int) -> Void) {
        if workers == 1 {
            work(0)
            return
        }
        #if canImport(Glibc)
        // The callers' bodies write only to the rows, items and worker slots they are given,
        // which no two workers share, so handing the closure to other threads is safe.
        withoutActuallyEscaping(work) { work in
            let shared = WorkerBody(work)
            var threads = [pthread_t?](repeating: nil, count: workers)
            for worker in 1..<workers {
                let start = Unmanaged.passRetained(WorkerStart(shared, worker)).toOpaque()
                var thread = pthread_t()
                let status = pthread_create(&thread, nil, { raw in
                    let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                    start.body.work(start.worker)
                    return nil
                }, start)
                if status == 0 {
                    threads[worker] = thread
                } else {
                    Unmanaged<WorkerStart>.fromOpaque(start).release()
                }
            }
            work(0)
            for worker in 1..<workers where threads[worker] == nil { work(worker) }
            for case let thread? in threads { pthread_join(thread, nil) }
        }
        #else
        for worker in 0..<workers { work(worker) }
        #endif
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

/// A worker body handed to other threads under the guarantee stated in `RowParallel.run`.
private final class WorkerBody: @unchecked Sendable {
    let work: (Int) -> Void
    init(_ work: @escaping (Int) -> Void) { self.work = work }
}

/// What one started thread runs: the body, and its worker number.
private final class WorkerStart: @unchecked Sendable {
    let body: WorkerBody
    let worker: Int
    init(_ body: WorkerBody, _ worker: Int) {
        self.body = body
        self.worker = worker
    }
}
