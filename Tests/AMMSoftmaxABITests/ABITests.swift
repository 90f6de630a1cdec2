import AMMSoftmax  // links the @_cdecl definitions
import CAMMSoftmax  // declares them, as C sees them
import Foundation
import Testing

/// The C entry points, called through their C names and the header's types.
@Suite("C ABI")
struct ABITests {
    var params: amm_params {
        var p = amm_params()
        amm_params_init(&p)
        return p
    }

    var lastError: String { String(cString: amm_last_error()) }

    let cos: [Double] = [0.8, 0.1, -0.2, 0.3, 0.9, 0.0]  // 2 x 3
    let labels: [Int64] = [0, 2]

    func forward64(_ p: amm_params, cos: [Double]? = nil, labels: [Int64]? = nil, n: Int64 = 2,
                   c: Int64 = 3) -> (status: Int32, loss: [Double]) {
        var p = p
        var loss = [Double](repeating: -1, count: 2)
        let status = amm_forward_f64(&p, cos ?? self.cos, n, c, labels ?? self.labels, &loss)
        return (status, loss)
    }

    @Test func paramsInitFillsTheDefaults() {
        let p = params
        #expect(Int(p.struct_size) == MemoryLayout<amm_params>.size)
        #expect(p.scale == 64 && p.margin == 0.5 && p.hard_margin == 0.2)
        #expect(p.target == Int32(AMM_TARGET_ARC) && p.hard == Int32(AMM_HARD_AMM))
        #expect(p.reduction == Int32(AMM_REDUCTION_MEAN))
        #expect(p.num_threads == 0 && p.ignore_index == -100)
        amm_params_init(nil)  // documented as a no-op
    }

    /// The version against a source the library is not built from: the newest heading of
    /// CHANGELOG.md, which a release writes by hand.
    @Test func versionIsTheNewestChangelogEntry() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let changelog = try String(contentsOf: root.appendingPathComponent("CHANGELOG.md"),
                                   encoding: .utf8)
        let newest = changelog.split(separator: "\n").first { $0.hasPrefix("## ") }
            .map { String($0.dropFirst(3)).trimmingCharacters(in: .whitespaces) }
        let version = String(cString: amm_version())
        #expect(newest == version)
        let parts = version.split(separator: ".").compactMap { UInt32($0) }
        #expect(parts.count == 3)
        #expect(amm_version_number() == parts[0] * 10000 + parts[1] * 100 + parts[2])
    }

    @Test func paramsValidateNamesTheFirstBadField() {
        var p = params
        #expect(amm_params_validate(&p) == Int32(AMM_OK.rawValue))
        #expect(amm_params_validate(nil) == Int32(AMM_ERR_NULL_POINTER.rawValue))
        p.scale = -1
        p.num_threads = -3
        #expect(amm_params_validate(&p) == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError == "amm_params_validate: parameter scale = -1.0 is invalid: must be "
                + "finite and > 0")
        p = params
        p.head_block_size = -2
        #expect(amm_params_validate(&p) == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.contains("head_block_size = -2"))
        p = params
        p.hard = 9
        #expect(amm_params_validate(&p) == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.contains("params->hard = 9 is unknown"))
    }

    /// The scale's range in Float is a parameter check, reported before a bad label or shape.
    @Test func f32ScaleIsCheckedWithTheParameters() {
        var p = params
        p.scale = 1e39
        var loss: [Float] = [0]
        let badLabels: [Int64] = [7, 0]
        #expect(amm_forward_f32(&p, cos.map { Float($0) }, 2, 3, badLabels, &loss)
                == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.hasPrefix("amm_forward_f32: parameter scale = 1e+39 is invalid"))
        var gx = [Float](repeating: 0, count: 6), gw = [Float](repeating: 0, count: 9)
        #expect(amm_head_forward_backward_f32(&p, [Float](repeating: 1, count: 6),
                                              [Float](repeating: 1, count: 9), 2, 3, 3,
                                              badLabels, &loss, &gx, &gw)
                == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.hasPrefix("amm_head_forward_backward_f32: parameter scale = 1e+39"))
    }

    @Test func kernelBuildDetailSaysWhichWasSelected() {
        let build = String(cString: amm_kernel_build())
        let detail = String(cString: amm_kernel_build_detail())
        #expect(detail.split(separator: "\n").contains { $0 == "\(build): selected" }
                || detail.contains("\(build): selected ("))
    }

    @Test func forwardBackwardAndTheirCombinationAgree() {
        var p = params
        p.reduction = Int32(AMM_REDUCTION_SUM)
        var loss = [Double](repeating: 0, count: 1), fbLoss = loss
        var grad = [Double](repeating: 0, count: 6), fbGrad = grad
        let upstream: [Double] = [1]
        #expect(amm_forward_f64(&p, cos, 2, 3, labels, &loss) == Int32(AMM_OK.rawValue))
        #expect(amm_backward_f64(&p, cos, 2, 3, labels, upstream, &grad) == Int32(AMM_OK.rawValue))
        #expect(amm_forward_backward_f64(&p, cos, 2, 3, labels, &fbLoss, &fbGrad)
                == Int32(AMM_OK.rawValue))
        #expect(loss == fbLoss && grad == fbGrad)
        #expect(loss[0] > 0 && grad.contains { $0 != 0 })

        // f32 agrees with f64 to single precision.
        let cos32 = cos.map { Float($0) }
        var loss32: [Float] = [0], grad32 = [Float](repeating: 0, count: 6)
        #expect(amm_forward_backward_f32(&p, cos32, 2, 3, labels, &loss32, &grad32)
                == Int32(AMM_OK.rawValue))
        #expect(abs(Double(loss32[0]) - loss[0]) <= 1e-5 * loss[0])
        for k in 0..<6 { #expect(abs(Double(grad32[k]) - grad[k]) <= 1e-5 * 64) }
    }

    @Test func statusCodesAndMessages() {
        let ok = Int32(AMM_OK.rawValue)
        var p = params
        #expect(forward64(p).status == ok)

        #expect(amm_forward_f64(nil, cos, 2, 3, labels, nil) == Int32(AMM_ERR_NULL_POINTER.rawValue))
        #expect(lastError == "amm_forward_f64: params is NULL")
        var loss: [Double] = [0]
        #expect(amm_forward_f64(&p, nil, 2, 3, labels, &loss) == Int32(AMM_ERR_NULL_POINTER.rawValue))
        #expect(lastError.contains("cos is NULL"))
        #expect(amm_forward_f64(&p, nil, 0, 3, nil, &loss) == ok)  // zero rows: NULL is fine
        #expect(loss == [0])

        #expect(forward64(p, n: -1).status == Int32(AMM_ERR_SHAPE.rawValue))
        #expect(lastError.contains("n = -1"))
        #expect(forward64(p, c: 0).status == Int32(AMM_ERR_SHAPE.rawValue))
        #expect(amm_forward_f64(&p, cos, 1 << 40, 1 << 40, labels, &loss)
                == Int32(AMM_ERR_SHAPE.rawValue))
        #expect(lastError.contains("overflow"))

        #expect(forward64(p, labels: [0, 7]).status == Int32(AMM_ERR_LABEL.rawValue))
        #expect(lastError.contains("labels[1] = 7"))

        var bad = p
        bad.scale = -1
        #expect(forward64(bad).status == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.contains("scale = -1.0"))
        bad = p
        bad.hard = 9
        #expect(forward64(bad).status == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.contains("params->hard = 9"))
        bad = p
        bad.struct_size = 8
        #expect(forward64(bad).status == Int32(AMM_ERR_PARAM.rawValue))
        #expect(lastError.contains("struct_size = 8"))

        var nanCos = cos
        nanCos[4] = .nan
        #expect(forward64(p, cos: nanCos).status == Int32(AMM_ERR_NONFINITE.rawValue))
        #expect(lastError.contains("cos[1, 1] = nan"))
        #expect(forward64(p, cos: nanCos, labels: [0, -100]).status == ok)  // ignored row

        var grad = [Double](repeating: 0, count: 6)
        #expect(amm_backward_f64(&p, cos, 2, 3, labels, [Double.infinity], &grad)
                == Int32(AMM_ERR_NONFINITE.rawValue))
        #expect(lastError.contains("grad_loss[0] = inf"))
    }

    /// What another thread saw: its message before and after its own failing call.
    final class ThreadMessages: @unchecked Sendable {  // written by one thread, read after join
        var before = "unset", after = "unset"
    }

    @Test func theErrorMessageBelongsToTheThread() {
        var p = params
        p.scale = 0
        _ = forward64(p)
        let mine = lastError
        #expect(mine.contains("scale = 0.0"))
        let seen = ThreadMessages()
        // The semaphore orders the thread's writes before the reads below (polling isFinished
        // would not: ThreadSanitizer reports it).
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            seen.before = String(cString: amm_last_error())
            _ = amm_forward_f64(nil, nil, 0, 1, nil, nil)
            seen.after = String(cString: amm_last_error())
            done.signal()
        }
        thread.start()
        done.wait()
        #expect(seen.before == "")
        #expect(seen.after == "amm_forward_f64: params is NULL")
        #expect(lastError == mine)
    }

    @Test func inputsAreNotModified() {
        var p = params
        p.reduction = Int32(AMM_REDUCTION_NONE)
        let cosBefore = cos, labelsBefore = labels
        var loss = [Double](repeating: 0, count: 2), grad = [Double](repeating: 0, count: 6)
        _ = amm_forward_backward_f64(&p, cos, 2, 3, labels, &loss, &grad)
        #expect(cos == cosBefore && labels == labelsBefore)
    }
}
