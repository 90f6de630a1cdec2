import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The row kernels compiled for the x86-64-v4 level (AVX-512; Package.swift passes
/// `-target-cpu skylake-avx512`), in their own shared library libAMMSoftmaxAVX512.so. The dispatcher
/// (AMMSoftmaxCore/KernelDispatch.swift) loads it only on a CPU that has that level and calls
/// this once: the table is filled only if the handshakes agree (`RowKernelTable.fill`).
@_cdecl("amm_internal_row_kernels_fill_avx512")
public func rowKernelsFillAVX512(_ table: UnsafeMutableRawPointer, _ size: Int,
                              _ handshake: UInt64) -> UInt64 {
    RowKernelTable.fill(table, size: size, handshake: handshake)
}
