// swift-tools-version:6.0
//
// amm-softmax: the AMM-Softmax loss (and ArcFace, CosFace, MV-Softmax) with exact gradients.
//
// Layout (one concern per target):
//   AMMSoftmaxCore  the mathematics (angles, margins, mining) and the row kernels, generic over
//                   Float and Double, with a small Swift API. No pointers from outside, no C.
//   CAMMSoftmax     the hand-written C header `include/amm_softmax.h`, exposed to Swift as a
//                   clang module so the ABI layer uses the very struct the C users see.
//   AMMSoftmax      the C ABI: `@_cdecl` entry points, argument validation, status codes and the
//                   thread-local error message. Built as the dynamic library libAMMSoftmax.so.
import PackageDescription

let package = Package(
    name: "amm-softmax",
    products: [
        // The shared library C, C++ and Python (ctypes) load: libAMMSoftmax.so.
        .library(name: "AMMSoftmax", type: .dynamic, targets: ["AMMSoftmax"]),
        // The Swift API, for Swift packages that depend on this one.
        .library(name: "AMMSoftmaxCore", targets: ["AMMSoftmaxCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
    ],
    targets: [
        .target(
            name: "AMMSoftmaxCore",
            dependencies: [.product(name: "RealModule", package: "swift-numerics")]
        ),
        .systemLibrary(name: "CAMMSoftmax", path: "include"),
        .target(
            name: "AMMSoftmax",
            dependencies: ["AMMSoftmaxCore", "CAMMSoftmax"]
        ),
        .testTarget(
            name: "AMMSoftmaxCoreTests",
            dependencies: ["AMMSoftmaxCore"]
        ),
        .testTarget(
            name: "AMMSoftmaxABITests",
            dependencies: ["AMMSoftmax", "CAMMSoftmax"]
        ),
    ]
)
