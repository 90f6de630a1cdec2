import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The row kernels compiled for the x86-64-v3 level (AVX2; Package.swift passes
/// `-target-cpu haswell`), in their own shared library libAMMSoftmaxAVX2.so. The dispatcher
/// (AMMSoftmaxCore/KernelDispatch.swift) loads it only on a CPU that has that level, and calls
/// this function once to get the table.
@_cdecl("amm_internal_row_kernels_avx2")
public func rowKernelsAVX2(_ table: UnsafeMutableRawPointer) {
    table.storeBytes(of: RowKernelTable.compiledHere(), as: RowKernelTable.self)
}
