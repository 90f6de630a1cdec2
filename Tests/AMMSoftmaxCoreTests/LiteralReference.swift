import Foundation
@testable import AMMSoftmaxCore

/// docs/FORMULATION.md transcribed literally, one scalar at a time, in Double: acos and cos where the
/// text says acos and cos, the 1e-7 floor where it says so. Slow and obvious on purpose: the
/// kernels (which use the trigonometric identities and online sums) are checked against it.
struct LiteralReference {
    let p: LossParameters

    func angles(_ c: Double) -> (clamped: Double, theta: Double, sin: Double) {
        let cc = min(max(c, -1), 1)
        return (cc, acos(cc), max(sqrt(1 - cc * cc), 1e-7))
    }

    func target(_ cy: Double) -> (f: Double, df: Double) {
        let (f, df) = exactTarget(cy)
        return (f, p.marginGradient == .exact ? df : 1)
    }

    func exactTarget(_ cy: Double) -> (f: Double, df: Double) {
        let m = p.margin
        switch p.target {
        case .cos: return (cy - m, 1)
        case .arc:
            let (cc, theta, s) = angles(cy)
            if cy > cos(Double.pi - m) { return (cos(theta + m), cos(m) + sin(m) * cc / s) }
            return (cy - m * sin(m), 1)
        }
    }

    func negative(_ c: Double, hard: Bool) -> (g: Double, dg: Double) {
        let (g, dg) = exactNegative(c, hard: hard)
        return (g, p.marginGradient == .exact ? dg : 1)
    }

    func exactNegative(_ c: Double, hard: Bool) -> (g: Double, dg: Double) {
        guard hard else { return (c, 1) }
        let t = p.hardMargin
        switch p.hard {
        case .amm:
            let (cc, theta, s) = angles(c)
            return (cos(max(theta - t, 0)), theta > t ? cos(t) - sin(t) * cc / s : 0)
        case .mvFixed: return (t * c + t - 1, t)
        case .mvAdaptive: return ((t + 1) * c + t, t + 1)
        case .curricular: return (c * (t + c), t + 2 * c)
        case .none: return (c, 1)
        }
    }

    /// Per-row losses (0 for ignored rows) and d(sum_i w_i loss_i)/dcos for row weights w.
    func rowLossesAndGradient(cos: [Double], labels: [Int64], classes: Int, weights: [Double])
        -> (losses: [Double], gradient: [Double])
    {
        var losses = [Double](repeating: 0, count: labels.count)
        var gradient = [Double](repeating: 0, count: cos.count)
        for (i, label) in labels.enumerated() where label != p.ignoreIndex {
            let y = Int(label)
            let row = Array(cos[i * classes..<(i + 1) * classes])
            let (f, df) = target(row[y])
            var z = [Double](repeating: 0, count: classes)
            var dz = [Double](repeating: 0, count: classes)
            for j in 0..<classes {
                if j == y { z[j] = p.scale * f; dz[j] = df; continue }
                let (g, dg) = negative(row[j], hard: row[j] > f)
                z[j] = p.scale * g; dz[j] = dg
            }
            let zmax = z.max()!
            let sum = z.reduce(0) { $0 + exp($1 - zmax) }
            losses[i] = log(sum) + zmax - z[y]
            for j in 0..<classes {
                let prob = exp(z[j] - zmax) / sum
                gradient[i * classes + j] =
                    weights[i] * p.scale * (prob - (j == y ? 1 : 0)) * dz[j]
            }
        }
        return (losses, gradient)
    }

    /// The reduced loss and its gradient (upstream 1), as forwardBackward returns them.
    func forwardBackward(cos: [Double], labels: [Int64], classes: Int)
        -> (loss: [Double], gradient: [Double])
    {
        let kept = labels.filter { $0 != p.ignoreIndex }.count
        let w: Double
        switch p.reduction {
        case .mean: w = kept > 0 ? 1 / Double(kept) : 0
        case .sum, .none: w = 1
        }
        let (losses, gradient) = rowLossesAndGradient(
            cos: cos, labels: labels, classes: classes,
            weights: [Double](repeating: w, count: labels.count))
        switch p.reduction {
        case .none: return (losses, gradient)
        case .sum: return ([losses.reduce(0, +)], gradient)
        case .mean: return ([kept > 0 ? losses.reduce(0, +) / Double(kept) : 0], gradient)
        }
    }
}

/// Every member of the family the kernels implement.
let allVariants: [(TargetKind, HardKind)] =
    TargetKind.allCases.flatMap { t in HardKind.allCases.map { (t, $0) } }

/// A seeded generator, so every run sees the same inputs (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Whether two values agree to a relative tolerance, with an absolute floor.
func close(_ a: Double, _ b: Double, rtol: Double, atol: Double) -> Bool {
    abs(a - b) <= atol + rtol * abs(b)
}

/// The first index where two arrays disagree beyond the tolerance, for a readable failure.
func firstMismatch(_ a: [Double], _ b: [Double], rtol: Double, atol: Double) -> String? {
    guard a.count == b.count else { return "counts differ: \(a.count) vs \(b.count)" }
    for k in a.indices where !close(a[k], b[k], rtol: rtol, atol: atol) {
        return "index \(k): \(a[k]) vs \(b[k]) (diff \(abs(a[k] - b[k])))"
    }
    return nil
}
