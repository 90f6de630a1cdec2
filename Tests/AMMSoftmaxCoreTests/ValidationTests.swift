import Testing
@testable import AMMSoftmaxCore

/// Bad input is refused with an error naming the parameter, row, column and value.
@Suite("Validation")
struct ValidationTests {
    let cos: [Double] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]

    func message(_ p: LossParameters = LossParameters(), cos: [Double]? = nil,
                 labels: [Int64] = [0, 1], classes: Int = 3) -> String? {
        do {
            _ = try AMMSoftmaxLoss(p).forward(cos: cos ?? self.cos, labels: labels, classes: classes)
            return nil
        } catch {
            return error.description
        }
    }

    @Test(arguments: [
        (LossParameters(scale: 0), "scale = 0.0"),
        (LossParameters(scale: -.infinity), "scale = -inf"),
        (LossParameters(scale: .nan), "scale = nan"),
        (LossParameters(margin: -0.1), "margin = -0.1"),
        (LossParameters(margin: Double.pi), "margin = 3.14159"),
        (LossParameters(margin: .infinity, target: .cos), "margin = inf"),
        (LossParameters(hardMargin: -1), "hard_margin = -1.0"),
        (LossParameters(hardMargin: .nan), "hard_margin = nan"),
        (LossParameters(numThreads: -2), "num_threads = -2"),
    ])
    func parametersOutOfTheirDomain(p: LossParameters, expected: String) {
        let m = message(p)
        #expect(m?.contains(expected) == true, "\(m ?? "no error")")
    }

    @Test func cosMarginMayBeNegativeOrLarge() {
        #expect(message(LossParameters(margin: -0.2, target: .cos)) == nil)
        #expect(message(LossParameters(margin: 5, target: .cos)) == nil)
    }

    @Test func labelsOutOfRangeNameRowAndValue() {
        #expect(message(labels: [0, 3])?.contains("labels[1] = 3") == true)
        #expect(message(labels: [-1, 0])?.contains("labels[0] = -1") == true)
        #expect(message(labels: [-100, 2]) == nil)
        // ignore_index inside [0, C) takes precedence over being a class.
        #expect(message(LossParameters(ignoreIndex: 2), cos: [0.1, 0.2, .nan, 1, 1, 1],
                        labels: [2, 0]) == nil)
    }

    @Test func nonFiniteCosineNamesRowAndColumn() {
        var bad = cos
        bad[5] = .infinity
        #expect(message(cos: bad)?.contains("cos[1, 2] = inf") == true)
        bad[1] = .nan
        #expect(message(cos: bad)?.contains("cos[0, 1] = nan") == true)
        // The lowest bad row is reported whatever the thread count.
        var many = [Double](repeating: 0.1, count: 3 * 64)
        many[3 * 50 + 1] = .nan
        many[3 * 7 + 2] = -.infinity
        for threads in [1, 2, 4] {
            let m = message(LossParameters(numThreads: threads), cos: many,
                            labels: [Int64](repeating: 0, count: 64))
            #expect(m?.contains("cos[7, 2] = -inf") == true, "\(threads): \(m ?? "")")
        }
    }

    @Test func shapesAreChecked() {
        #expect(message(classes: 0)?.contains("c = 0") == true)
        #expect(message(cos: [0.1, 0.2], classes: 3)?.contains("cos has 2 values") == true)
        #expect(throws: LossError.self) {
            _ = try AMMSoftmaxLoss(LossParameters(reduction: .none))
                .backward(cos: cos, labels: [0, 1], classes: 3, gradOutput: [1])
        }
        #expect(throws: LossError.nonFiniteGradOutput(name: "grad_output", index: 0, value: .infinity)) {
            _ = try AMMSoftmaxLoss().backward(cos: cos, labels: [0, 1], classes: 3,
                                              gradOutput: [.infinity])
        }
    }
}

/// Inputs whose logits cannot be represented, and the lowest bad column when the target is bad.
@Suite("Overflow and error positions")
struct OverflowTests {
    @Test func floatScaleBeyondFloatIsRefused() {
        #expect(throws: LossError.self) {
            _ = try AMMSoftmaxLoss(LossParameters(scale: 1e39))
                .forward(cos: [Float](repeating: 0.1, count: 4), labels: [0, 1], classes: 2)
        }
        // The same scale is fine in Double.
        #expect(throws: Never.self) {
            _ = try AMMSoftmaxLoss(LossParameters(scale: 1e39))
                .forward(cos: [Double](repeating: 0.1, count: 4), labels: [0, 1], classes: 2)
        }
    }

    @Test func overflowingLogitsNameTheRow() {
        // s g = 2e38 * (2.2 c + 1.2) overflows Float for c near 1: row 1 only.
        let p = LossParameters(scale: 2e38, hardMargin: 1.2, hard: .mvAdaptive, reduction: .none)
        do {
            _ = try AMMSoftmaxLoss(p).forwardBackward(cos: [Float]([0.9, -0.5, -0.9, 0.95]),
                                                      labels: [0, 0], classes: 2)
            Issue.record("no error")
        } catch {
            #expect(error == .overflow(row: 1, elementType: "Float",
                                       largest: Double(Float.greatestFiniteMagnitude)))
            #expect(error.description.contains("row 1") && error.description.contains("scale"))
        }
    }

    @Test func lowestColumnIsNamedWhenTheTargetIsBad() throws {
        var cos = [Double](repeating: 0.1, count: 6)
        cos[1] = .nan
        cos[5] = .infinity
        do {
            _ = try AMMSoftmaxLoss().forward(cos: cos, labels: [5], classes: 6)
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("cos[0, 1] = nan"), "\(error)")
        }
    }
}
