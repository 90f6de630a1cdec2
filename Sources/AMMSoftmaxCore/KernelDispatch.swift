import AMMSoftmaxKernels
import AMMSoftmaxMath
import CPlatform
#if canImport(Glibc)
import Glibc
#endif

/// Which build of the row kernels runs: the fastest one this CPU supports and this installation
/// has, chosen once per process.
///
/// - `avx512`: libAMMSoftmaxAVX512.so, compiled for x86-64-v4, if the CPU and OS support it;
/// - `avx2`: libAMMSoftmaxAVX2.so, compiled for x86-64-v3, likewise;
/// - `portable`: this module's own copy, compiled for baseline x86-64 (SSE2): every x86-64 CPU.
///
/// The optional libraries are looked for in the folder of the image holding this code
/// (libAMMSoftmax.so, for C and Python users). `AMM_SOFTMAX_KERNELS=portable|avx2|avx512` asks
/// for a build; the request is granted only if the CPU supports it and the library is there,
/// else the best available below it runs. The AVX2 and AVX-512 builds compute the same bits
/// (fixed vector width, the same fused multiply-adds); the portable build, without FMA, agrees
/// with them to within rounding (python/tests/test_kernel_builds.py checks both).
public enum KernelDispatch {
    /// The builds, fastest first.
    public enum Build: String, CaseIterable, Sendable {
        case avx512, avx2, portable
    }

    /// The build in use and its table.
    static let selected: (build: Build, table: RowKernelTable) = select()

    /// The name of the build in use ("avx512", "avx2" or "portable").
    public static var buildName: String { selected.build.rawValue }

    static let portable = RowKernelTable.compiledHere()

    private static func select() -> (Build, RowKernelTable) {
        let request = getenv("AMM_SOFTMAX_KERNELS").flatMap { Build(rawValue: String(cString: $0)) }
        let supported: [Build: Bool] = [
            .avx512: amm_cpu_supports_x86_64_v4() != 0,
            .avx2: amm_cpu_supports_x86_64_v3() != 0,
            .portable: true,
        ]
        let ceiling = Build.allCases.firstIndex(of: request ?? .avx512)!
        for build in Build.allCases[ceiling...] where supported[build] == true {
            if build == .portable { return (.portable, portable) }
            if let table = load(build) { return (build, table) }
        }
        return (.portable, portable)
    }

    /// Loads libAMMSoftmax<BUILD>.so from this image's folder and asks it for its table.
    private static func load(_ build: Build) -> RowKernelTable? {
        #if canImport(Glibc)
        let anchor = unsafeBitCast(portable.statisticsF32, to: UnsafeRawPointer.self)
        guard let imagePath = amm_image_path(anchor) else { return nil }
        let image = String(cString: imagePath)
        let folder = image.lastIndex(of: "/").map { String(image[..<$0]) } ?? "."
        let name = build == .avx512 ? "AVX512" : "AVX2"
        guard let handle = dlopen("\(folder)/libAMMSoftmax\(name).so", RTLD_NOW | RTLD_LOCAL),
              let symbol = dlsym(handle, "amm_internal_row_kernels_\(build.rawValue)")
        else { return nil }
        typealias Fill = @convention(c) (UnsafeMutableRawPointer) -> Void
        let fill = unsafeBitCast(symbol, to: Fill.self)
        var table = portable
        withUnsafeMutableBytes(of: &table) { fill($0.baseAddress!) }
        return table  // the library stays loaded for the life of the process
        #else
        return nil
        #endif
    }
}

/// The row kernels of the selected build for one element type.
package struct RowKernels<T: LossScalar> {
    package let statistics: RowKernelTable.Statistics
    package let gradient: RowKernelTable.Gradient
    /// The fused head's passes (AMMSoftmaxHead).
    package let accumulate: RowKernelTable.Accumulate
    package let segment: RowKernelTable.Segment
    package let normalize: RowKernelTable.Normalize
    package let normalizeBackward: RowKernelTable.NormalizeBackward

    package init() {
        let table = KernelDispatch.selected.table
        if T.self == Float.self {
            (statistics, gradient) = (table.statisticsF32, table.gradientF32)
            (accumulate, segment) = (table.accumulateF32, table.segmentF32)
            (normalize, normalizeBackward) = (table.normalizeF32, table.normalizeBackwardF32)
        } else {
            (statistics, gradient) = (table.statisticsF64, table.gradientF64)
            (accumulate, segment) = (table.accumulateF64, table.segmentF64)
            (normalize, normalizeBackward) = (table.normalizeF64, table.normalizeBackwardF64)
        }
    }
}
