import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The row kernels compiled for the x86-64-v4 level (AVX512; Package.swift passes
/// `-target-cpu skylake-avx512`), in their own shared library libAMMSoftmaxAVX512.so. The dispatcher
/// (AMMSoftmaxCore/KernelDispatch.swift) loads it only on a CPU that has that level, and calls
/// this function once to get the table.
@_cdecl("amm_internal_row_kernels_avx512")
public func rowKernelsAVX512(_ table: UnsafeMutableRawPointer) {
    table.storeBytes(of: RowKernelTable.compiledHere(), as: RowKernelTable.self)
}
