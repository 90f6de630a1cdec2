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

    /// The build in use, its table, and how it was chosen.
    static let selected: (build: Build, table: RowKernelTable, detail: String) = select()

    /// The name of the build in use ("avx512", "avx2" or "portable").
    public static var buildName: String { selected.build.rawValue }

    /// How the build in use was chosen: one line per build considered, fastest first, each
    /// saying why it was passed over ("not supported by this CPU", "not found", "refused: ...",
    /// "above the AMM_SOFTMAX_KERNELS request") or that it was selected.
    public static var selectionDetail: String { selected.detail }

    static let portable = RowKernelTable.compiledHere()

    private static func select() -> (Build, RowKernelTable, String) {
        let requestText = getenv("AMM_SOFTMAX_KERNELS").map { String(cString: $0) }
        let request = requestText.flatMap { Build(rawValue: $0) }
        let supported: [Build: Bool] = [
            .avx512: amm_cpu_supports_x86_64_v4() != 0,
            .avx2: amm_cpu_supports_x86_64_v3() != 0,
            .portable: true,
        ]
        var lines: [String] = []
        if let requestText, request == nil {
            lines.append("AMM_SOFTMAX_KERNELS=\(requestText) is not a build (avx512, avx2, "
                + "portable): ignored")
        }
        let ceiling = Build.allCases.firstIndex(of: request ?? .avx512)!
        for build in Build.allCases[..<ceiling] {
            lines.append("\(build.rawValue): above the AMM_SOFTMAX_KERNELS request")
        }
        for build in Build.allCases[ceiling...] {
            if build == .portable {
                lines.append("portable: selected (compiled into this library)")
                return (.portable, portable, lines.joined(separator: "\n"))
            }
            guard supported[build] == true else {
                lines.append("\(build.rawValue): not supported by this CPU")
                continue
            }
            switch load(build) {
            case .success(let table):
                lines.append("\(build.rawValue): selected")
                return (build, table, lines.joined(separator: "\n"))
            case .failure(let refusal):
                lines.append("\(build.rawValue): \(refusal.reason)")
            }
        }
        return (.portable, portable, lines.joined(separator: "\n"))  // not reached
    }

    /// Why a build library could not be used.
    struct Refusal: Error {
        let reason: String
    }

    /// Loads libAMMSoftmax<BUILD>.so from this image's folder, checks its handshake, and asks
    /// it for its table.
    private static func load(_ build: Build) -> Result<RowKernelTable, Refusal> {
        #if canImport(Glibc)
        let anchor = unsafeBitCast(portable.statisticsF32, to: UnsafeRawPointer.self)
        guard let imagePath = amm_image_path(anchor) else {
            return .failure(Refusal(reason: "the folder of this library is unknown"))
        }
        let image = String(cString: imagePath)
        let folder = image.lastIndex(of: "/").map { String(image[..<$0]) } ?? "."
        let file = "libAMMSoftmax\(build == .avx512 ? "AVX512" : "AVX2").so"
        let path = "\(folder)/\(file)"
        guard access(path, F_OK) == 0 else {
            return .failure(Refusal(reason: "\(file) not found beside "
                + (image.split(separator: "/").last.map(String.init) ?? image)))
        }
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "unknown reason"
            return .failure(Refusal(reason: "\(file) could not be loaded: \(why)"))
        }
        // The library stays loaded for the life of the process once its table is taken; a
        // refused one is closed.
        guard let fillSymbol = dlsym(handle, RowKernelTable.fillSymbol(build.rawValue)) else {
            dlclose(handle)
            return .failure(Refusal(reason: "\(file) refused: it has no kernel-table handshake "
                + "(built by an older version; rebuild or reinstall it with this library)"))
        }
        typealias Fill = @convention(c) (UnsafeMutableRawPointer, Int, UInt64) -> UInt64
        let ours = RowKernelTable.handshake
        var table = portable
        let theirs = withUnsafeMutableBytes(of: &table) {
            unsafeBitCast(fillSymbol, to: Fill.self)($0.baseAddress!, $0.count, ours)
        }
        guard theirs == ours else {
            dlclose(handle)
            return .failure(Refusal(reason: "\(file) refused: its kernel table (ABI "
                + "\(theirs >> 32), \(theirs & 0xFFFF_FFFF) bytes) does not match this "
                + "library's (ABI \(ours >> 32), \(ours & 0xFFFF_FFFF) bytes); rebuild or "
                + "reinstall both together"))
        }
        return .success(table)
        #else
        return .failure(Refusal(reason: "dynamic loading is not available on this platform"))
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
    /// Rows stored in 16 bits, computed in Float (whatever T).
    package let halfStatistics: RowKernelTable.HalfStatistics
    package let halfGradient: RowKernelTable.HalfGradient

    package init() {
        let table = KernelDispatch.selected.table
        (halfStatistics, halfGradient) = (table.statisticsHalf, table.gradientHalf)
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
