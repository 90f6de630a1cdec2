import AMMSoftmaxCore

#if canImport(Glibc)
import Glibc
#endif
import CAMMSoftmax

/// The library version, "MAJOR.MINOR.PATCH", from the header's AMM_VERSION_* macros (the one
/// source of the version: Python's package metadata reads them too). Made once, never freed.
nonisolated(unsafe) let libraryVersion: UnsafePointer<CChar> = UnsafePointer(
    strdup("\(AMM_VERSION_MAJOR).\(AMM_VERSION_MINOR).\(AMM_VERSION_PATCH)")!)

/// How the kernel build was chosen (`KernelDispatch.selectionDetail`), as a C string made once
/// and never freed, for `amm_kernel_build_detail()`.
nonisolated(unsafe) let kernelBuildDetail: UnsafePointer<CChar> = UnsafePointer(
    strdup(KernelDispatch.selectionDetail) ?? strdup("")!)

/// The kernel build in use, as a static C string for `amm_kernel_build()`.
enum KernelBuildName {
    private static let avx512: StaticString = "avx512"
    private static let avx2: StaticString = "avx2"
    private static let portable: StaticString = "portable"

    static var current: UnsafePointer<CChar> {
        let name: StaticString
        switch KernelDispatch.Build(rawValue: KernelDispatch.buildName) ?? .portable {
        case .avx512: name = avx512
        case .avx2: name = avx2
        case .portable: name = portable
        }
        return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
    }
}
