import AMMSoftmaxKernels
import AMMSoftmaxMath

// The row kernels compiled for the x86-64-v4 level (AVX-512; Package.swift passes
// `-target-cpu skylake-avx512`), in their own shared library libAMMSoftmaxAVX512.so. The dispatcher
// (AMMSoftmaxCore/KernelDispatch.swift) loads it only on a CPU that has that level, checks the
// handshake, then asks for the table once.

@_cdecl("amm_internal_row_kernels_handshake_avx512")
public func rowKernelsHandshakeAVX512() -> UInt64 {
    RowKernelTable.handshake
}

@_cdecl("amm_internal_row_kernels_fill_avx512")
public func rowKernelsFillAVX512(_ table: UnsafeMutableRawPointer, _ size: Int) -> Int32 {
    RowKernelTable.fill(table, size: size)
}
