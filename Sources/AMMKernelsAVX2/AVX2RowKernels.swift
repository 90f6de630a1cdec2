import AMMSoftmaxKernels
import AMMSoftmaxMath

// The row kernels compiled for the x86-64-v3 level (AVX2; Package.swift passes
// `-target-cpu haswell`), in their own shared library libAMMSoftmaxAVX2.so. The dispatcher
// (AMMSoftmaxCore/KernelDispatch.swift) loads it only on a CPU that has that level, checks the
// handshake, then asks for the table once.

@_cdecl("amm_internal_row_kernels_handshake_avx2")
public func rowKernelsHandshakeAVX2() -> UInt64 {
    RowKernelTable.handshake
}

@_cdecl("amm_internal_row_kernels_fill_avx2")
public func rowKernelsFillAVX2(_ table: UnsafeMutableRawPointer, _ size: Int) -> Int32 {
    RowKernelTable.fill(table, size: size)
}
