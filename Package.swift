// swift-tools-version:6.0
//
// amm-softmax: the AMM-Softmax loss (and ArcFace, CosFace, MV-Softmax) with exact gradients.
//
// Layout (one concern per target; each depends only on those above it; docs/ARCHITECTURE.md
// follows a call through them):
//   CPlatform          what Swift cannot say directly: the CPU level, the path of an image,
//                      cache prefetch hints (used by the row kernels).
//   CVectorMath        the exponential, the amm mining arithmetic and "any lane greater" in
//                      clang's vector extensions (IEEE operations, fused multiply-adds named
//                      where the CPU has them: the same bits on the AVX2 and AVX-512 builds),
//                      where Swift's SIMD code vectorised unreliably; header-only C.
//   AMMSoftmaxMath     the mathematics: parameters and their domains (validation), angles, the
//                      target logit, mining and the negative logit; and the element types
//                      (LossScalar), whose requirements are the vector primitives of
//                      CVectorMath (the exponential, the amm arithmetic, the one-pass stretch),
//                      so that generic kernels reach the C code for their type.
//   AMMSoftmaxKernels  the row kernels: SIMD loops over one row (statistics, gradient), generic
//                      and @inlinable, so that each build below compiles its own copy.
//   AMMKernelsAVX2,    the row kernels compiled for x86-64-v3 (AVX2) and x86-64-v4 (AVX-512),
//   AMMKernelsAVX512   each in its own shared library (libAMMSoftmaxAVX2.so,
//                      libAMMSoftmaxAVX512.so) that the core loads only on a CPU that has the
//                      level; the core's own copy is baseline x86-64 (SSE2) and runs anywhere.
//   AMMSoftmaxCore     the whole-matrix kernels: kernel choice, rows over threads, reductions,
//                      and the Swift API (which calls the validation of AMMSoftmaxMath).
//   AMMSoftmaxHead     the fused head: embeddings and class weights in, loss and both gradients
//                      out, over blocks of classes with OpenBLAS products, never holding the
//                      N x C matrix. COpenBLAS: cblas.h; the library is Debian's serial
//                      (single-threaded) OpenBLAS, linked statically with its symbols hidden,
//                      so that the head has a private copy: it never changes a setting other
//                      code in the process shares, and needs no OpenBLAS at run time.
//   CAMMSoftmax        the hand-written C header `include/amm_softmax.h`, exposed to Swift as a
//                      clang module so the ABI layer uses the very struct the C users see.
//   AMMSoftmax         the C ABI: `@_cdecl` entry points, reading amm_params once, pointer
//                      checks, status codes and the thread-local error message. Built as the dynamic library
//                      libAMMSoftmax.so.
import PackageDescription

// Debian's serial OpenBLAS (libopenblas-serial-dev), as a static archive: see AMMSoftmaxHead.
let serialOpenBLAS = "/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.a"

let package = Package(
    name: "amm-softmax",
    products: [
        // The shared library C, C++ and Python (ctypes) load: libAMMSoftmax.so.
        .library(name: "AMMSoftmax", type: .dynamic, targets: ["AMMSoftmax"]),
        // The Swift API, for Swift packages that depend on this one.
        .library(name: "AMMSoftmaxCore", targets: ["AMMSoftmaxCore"]),
        // Faster row kernels for newer CPUs, loaded by the library from its own folder when
        // present and supported (optional: without them the portable kernels run).
        .library(name: "AMMSoftmaxAVX2", type: .dynamic, targets: ["AMMKernelsAVX2"]),
        .library(name: "AMMSoftmaxAVX512", type: .dynamic, targets: ["AMMKernelsAVX512"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
    ],
    targets: [
        .target(name: "CVectorMath"),
        .target(
            name: "AMMSoftmaxMath",
            dependencies: [.product(name: "RealModule", package: "swift-numerics"), "CVectorMath"]
        ),
        .target(
            name: "AMMSoftmaxKernels",
            dependencies: ["AMMSoftmaxMath", "CPlatform", "CVectorMath",
                           .product(name: "RealModule", package: "swift-numerics")]
        ),
        // -target-cpu names LLVM's CPU models: haswell and skylake-avx512 enable exactly the
        // instruction sets of x86-64-v3 and x86-64-v4 that compiled code uses (the extras they
        // carry, AES, RDRAND, CLWB and the like, are never generated from this code). The CPU
        // check uses the x86-64-v3/v4 names. -Xcc -march gives the same CPU to the C vector
        // helpers (CVectorMath) that these modules compile inline.
        .target(
            name: "AMMKernelsAVX2",
            dependencies: ["AMMSoftmaxKernels", "AMMSoftmaxMath"],
            swiftSettings: [.unsafeFlags(["-target-cpu", "haswell", "-Xcc", "-march=haswell"])]
        ),
        .target(
            name: "AMMKernelsAVX512",
            dependencies: ["AMMSoftmaxKernels", "AMMSoftmaxMath"],
            swiftSettings: [.unsafeFlags(["-target-cpu", "skylake-avx512", "-Xcc", "-march=skylake-avx512"])]
        ),
        .target(name: "CPlatform", linkerSettings: [.linkedLibrary("dl")]),
        .target(
            name: "AMMSoftmaxCore",
            dependencies: ["AMMSoftmaxMath", "AMMSoftmaxKernels", "CPlatform"]
        ),
        .systemLibrary(
            name: "COpenBLAS", path: "Sources/COpenBLAS",
            providers: [.apt(["libopenblas-serial-dev"])]
        ),
        .target(
            name: "AMMSoftmaxHead",
            dependencies: ["AMMSoftmaxCore", "AMMSoftmaxKernels", "AMMSoftmaxMath", "COpenBLAS",
                           "COpenBLASGuard"],
            linkerSettings: [.unsafeFlags([
                "-Xlinker", serialOpenBLAS, "-Xlinker", "--exclude-libs=libopenblas.a",
                // The archive's buffer pool goes through COpenBLASGuard's lock.
                "-Xlinker", "--wrap=blas_memory_alloc", "-Xlinker", "--wrap=blas_memory_free",
            ])]
        ),
        // A lock around that OpenBLAS's buffer pool, which is not safe for concurrent callers.
        .target(name: "COpenBLASGuard"),
        .systemLibrary(name: "CAMMSoftmax", path: "include"),
        .target(
            name: "AMMSoftmax",
            dependencies: ["AMMSoftmaxCore", "AMMSoftmaxHead", "CAMMSoftmax"]
        ),
        // Test-only: the vector arithmetic (CVectorMath) compiled as the AVX2 and AVX-512
        // kernel builds compile it, for the accuracy tests (one shared body,
        // Tests/CVectorMathProbes).
        .target(
            name: "CVectorMathAVX2Probe", dependencies: ["CVectorMath"],
            path: "Tests/CVectorMathAVX2Probe",
            cSettings: [.unsafeFlags(["-march=haswell", "-Wno-psabi"])]
        ),
        .target(
            name: "CVectorMathAVX512Probe", dependencies: ["CVectorMath"],
            path: "Tests/CVectorMathAVX512Probe",
            cSettings: [.unsafeFlags(["-march=skylake-avx512"])]
        ),
        .testTarget(
            name: "AMMSoftmaxCoreTests",
            dependencies: ["AMMSoftmaxCore", "AMMSoftmaxHead", "AMMSoftmaxKernels",
                           "CVectorMathAVX2Probe", "CVectorMathAVX512Probe", "CPlatform"]
        ),
        .testTarget(
            name: "AMMSoftmaxABITests",
            dependencies: ["AMMSoftmax", "CAMMSoftmax"]
        ),
    ]
)
