// swift-tools-version:6.0
//
// A Swift package outside amm-softmax's, as a user writes one: it depends on amm-softmax by path
// and uses its Swift API (AMMSoftmaxCore). scripts/test_install.sh copies this folder elsewhere,
// points AMM_SOFTMAX_ROOT at the checkout, then builds and runs it.
import PackageDescription

let root = Context.environment["AMM_SOFTMAX_ROOT"] ?? "../.."
// A path dependency's identity is its folder's name, whatever the checkout is called.
let identity = String(root.split(separator: "/").last ?? "amm-softmax")

let package = Package(
    name: "SwiftConsumer",
    dependencies: [.package(path: root)],
    targets: [
        .executableTarget(
            name: "SwiftConsumer",
            dependencies: [.product(name: "AMMSoftmaxCore", package: identity)]
        ),
    ]
)
