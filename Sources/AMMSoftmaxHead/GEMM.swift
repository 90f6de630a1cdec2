import AMMSoftmaxCore
import AMMSoftmaxMath
import COpenBLAS
import COpenBLASGuard

/// The element types whose matrix products OpenBLAS computes: sgemm for Float, dgemm for Double.
public protocol GEMMScalar: LossScalar {
    /// C = alpha op(A) op(B) + beta C for row-major matrices, op(X) = X or X^T; C is m x n,
    /// the inner dimension k. Leading dimensions are the row lengths as stored.
    static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Self, a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
        beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
}

@inline(__always)
private func order(_ transpose: Bool) -> CBLAS_TRANSPOSE {
    transpose ? CblasTrans : CblasNoTrans
}

// blasint is 32-bit in Debian's OpenBLAS: the head validates that every dimension fits.
extension Float: GEMMScalar {
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(CblasRowMajor, order(transposeA), order(transposeB), blasint(m), blasint(n),
                    blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}

extension Double: GEMMScalar {
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Double, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
        beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        cblas_dgemm(CblasRowMajor, order(transposeA), order(transposeB), blasint(m), blasint(n),
                    blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}

/// The head's three products, each split into chunks of a fixed size along an output dimension
/// and spread over the workers: every output element is computed by the same single-threaded
/// call whatever the thread count, so the results are bitwise the same for every count.
///
/// The OpenBLAS behind `GEMMScalar` is the head's own: Debian's serial build, linked statically
/// with hidden symbols (Package.swift). Being serial, it never splits a product by a thread
/// count of its own (which would change the bits), and no setting of an OpenBLAS that other
/// code in the process uses is ever read or changed. Its buffer pool is not safe for
/// concurrent callers in this build: the link routes it through COpenBLASGuard's lock, so the
/// workers may call it at once.
struct ChunkedGEMM<T: GEMMScalar> {
    init(threads: Int) {
        // A reference keeps the guard's object in the link (the --wrap targets live there).
        precondition(amm_blas_memory_guard_linked() == 1)
        self.threads = threads
    }

    /// Classes per chunk, and embedding columns per chunk: large enough for OpenBLAS to run
    /// near its single-thread peak, small enough to give the workers several chunks (D = 512
    /// makes 4 column chunks). Fixed numbers, never derived from the thread count.
    static var classChunk: Int { 256 }
    static var columnChunk: Int { 128 }

    let threads: Int

    /// cos (n x count, row stride count) = x^ (n x d) W^_b^T, W^_b count x d; split over classes.
    func cosines(xHat: UnsafePointer<T>, wHat: UnsafePointer<T>, n: Int, d: Int, count: Int,
                 into cos: UnsafeMutablePointer<T>) {
        forEachChunk(count, of: Self.classChunk) { j0, width in
            T.gemm(transposeA: false, transposeB: true, m: n, n: width, k: d, alpha: 1,
                   a: xHat, lda: d, b: wHat + j0 * d, ldb: d, beta: 0, c: cos + j0, ldc: count)
        }
    }

    /// dx^ (n x d) += dcos (n x count) W^_b (count x d); split over embedding columns.
    func accumulateEmbeddings(dcos: UnsafePointer<T>, wHat: UnsafePointer<T>, n: Int, d: Int,
                              count: Int, into dxHat: UnsafeMutablePointer<T>) {
        forEachChunk(d, of: Self.columnChunk) { k0, width in
            T.gemm(transposeA: false, transposeB: false, m: n, n: width, k: count, alpha: 1,
                   a: dcos, lda: count, b: wHat + k0, ldb: d, beta: 1, c: dxHat + k0, ldc: d)
        }
    }

    /// dW^_b (count x d) = dcos^T (count x n) x^ (n x d); split over classes.
    func weights(dcos: UnsafePointer<T>, xHat: UnsafePointer<T>, n: Int, d: Int, count: Int,
                 into dwHat: UnsafeMutablePointer<T>) {
        forEachChunk(count, of: Self.classChunk) { j0, width in
            T.gemm(transposeA: true, transposeB: false, m: width, n: d, k: n, alpha: 1,
                   a: dcos + j0, lda: count, b: xHat, ldb: d, beta: 0, c: dwHat + j0 * d, ldc: d)
        }
    }

    /// body(start, width) for the chunks of [0, total), on up to `threads` workers.
    private func forEachChunk(_ total: Int, of chunk: Int, _ body: (Int, Int) -> Void) {
        let chunks = (total + chunk - 1) / chunk
        RowParallel.forEachItem(count: chunks, threads: threads) { index in
            let start = index * chunk
            body(start, Swift.min(chunk, total - start))
        }
    }
}
