import AMMSoftmaxMath
import COpenBLAS

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

/// How many threads OpenBLAS uses (process-wide: OpenBLAS has no per-call setting).
enum BLASThreads {
    static func use(_ threads: Int) { openblas_set_num_threads(Int32(threads)) }
}
