// Uses amm-softmax's Swift API from another package: the CosFace loss without hard-negative
// re-weighting (target .cos, hard .none) of a small batch, checked against the softmax cross-
// entropy written out here, and a refused call. Prints "swift consumer: ok" and exits 0 only
// if both behave.
import AMMSoftmaxCore

#if canImport(Glibc)
import Glibc
#endif

let rows = 3, classes = 5
let cos: [Double] = (0..<rows * classes).map { k in sin(Double(k) * 0.7) * 0.9 }
let labels: [Int64] = [0, 3, 4]
let parameters = LossParameters(scale: 30, margin: 0.2, target: .cos, hard: .none,
                                reduction: .mean)

// CosFace: logits s * cos, with s * (cos_y - m) for the target; mean cross-entropy.
var expected = 0.0
for i in 0..<rows {
    let y = Int(labels[i])
    let logits = (0..<classes).map { j in
        parameters.scale * (cos[i * classes + j] - (j == y ? parameters.margin : 0))
    }
    let top = logits.max()!
    let logSum = top + log(logits.map { exp($0 - top) }.reduce(0, +))
    expected += (logSum - logits[y]) / Double(rows)
}

let (loss, gradient) = try AMMSoftmaxLoss(parameters)
    .forwardBackward(cos: cos, labels: labels, classes: classes)
print("swift consumer: loss \(loss[0]), expected \(expected)")
guard abs(loss[0] - expected) <= 1e-12 * abs(expected), gradient.count == rows * classes else {
    print("swift consumer: the loss differs from the cross-entropy")
    exit(1)
}

do {
    _ = try AMMSoftmaxLoss(parameters).forward(cos: cos, labels: [0, 3, 5], classes: classes)
    print("swift consumer: a label out of range was accepted")
    exit(1)
} catch {
    print("swift consumer: refused as documented: \(error)")
}
print("swift consumer: ok")
