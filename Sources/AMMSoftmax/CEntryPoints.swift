import AMMSoftmaxCore
import CAMMSoftmax

// The C entry points of libAMMSoftmax.so, exactly as include/amm_softmax.h declares them.
// Each one only forwards to LossCall or HeadCall (validation, then the kernel) and turns the
// outcome into a status code; see the header for the contract of each.

@_cdecl("amm_params_init")
public func ammParamsInit(_ p: UnsafeMutablePointer<amm_params>?) {
    p?.pointee = ABIParameters.defaults
}

@_cdecl("amm_params_validate")
public func ammParamsValidate(_ p: UnsafePointer<amm_params>?) -> Int32 {
    reportingStatus("amm_params_validate") { () throws(ABIError) in
        _ = try ABIParameters(reading: p, checkingHeadBlockSize: true)
    }
}

@_cdecl("amm_version")
public func ammVersion() -> UnsafePointer<CChar> {
    libraryVersion
}

@_cdecl("amm_version_number")
public func ammVersionNumber() -> UInt32 {
    UInt32(AMM_VERSION_MAJOR * 10000 + AMM_VERSION_MINOR * 100 + AMM_VERSION_PATCH)
}

@_cdecl("amm_status_name")
public func ammStatusName(_ status: Int32) -> UnsafePointer<CChar> {
    UnsafeRawPointer(StatusName.of(status).utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("amm_kernel_build")
public func ammKernelBuild() -> UnsafePointer<CChar> {
    KernelBuildName.current
}

@_cdecl("amm_kernel_build_detail")
public func ammKernelBuildDetail() -> UnsafePointer<CChar> {
    kernelBuildDetail
}

@_cdecl("amm_last_error")
public func ammLastError() -> UnsafePointer<CChar> {
    LastError.current
}

// MARK: - f32

@_cdecl("amm_forward_f32")
public func ammForwardF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_forward_f32") { () throws(ABIError) in
        try LossCall(mode: .forward, params: p, cos: cos, n: n, c: c, labels: labels,
                     loss: loss).run()
    }
}

@_cdecl("amm_backward_f32")
public func ammBackwardF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ gradLoss: UnsafePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_backward_f32") { () throws(ABIError) in
        try LossCall(mode: .backward, params: p, cos: cos, n: n, c: c, labels: labels,
                     gradLoss: gradLoss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_forward_backward_f32")
public func ammForwardBackwardF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_forward_backward_f32") { () throws(ABIError) in
        try LossCall(mode: .forwardBackward, params: p, cos: cos, n: n, c: c, labels: labels,
                     loss: loss, gradCos: gradCos).run()
    }
}

// MARK: - f64

@_cdecl("amm_forward_f64")
public func ammForwardF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_forward_f64") { () throws(ABIError) in
        try LossCall(mode: .forward, params: p, cos: cos, n: n, c: c, labels: labels,
                     loss: loss).run()
    }
}

@_cdecl("amm_backward_f64")
public func ammBackwardF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ gradLoss: UnsafePointer<Double>?,
    _ gradCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_backward_f64") { () throws(ABIError) in
        try LossCall(mode: .backward, params: p, cos: cos, n: n, c: c, labels: labels,
                     gradLoss: gradLoss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_forward_backward_f64")
public func ammForwardBackwardF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Double>?,
    _ gradCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_forward_backward_f64") { () throws(ABIError) in
        try LossCall(mode: .forwardBackward, params: p, cos: cos, n: n, c: c, labels: labels,
                     loss: loss, gradCos: gradCos).run()
    }
}

// MARK: - bf16 (16-bit storage, computed in f32)

@_cdecl("amm_forward_bf16")
public func ammForwardBF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_forward_bf16") { () throws(ABIError) in
        try HalfLossCall(mode: .forward, format: .bfloat16, params: p, cos: cos, n: n, c: c,
                         labels: labels, loss: loss).run()
    }
}

@_cdecl("amm_backward_bf16")
public func ammBackwardBF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ gradLoss: UnsafePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<UInt16>?
) -> Int32 {
    reportingStatus("amm_backward_bf16") { () throws(ABIError) in
        try HalfLossCall(mode: .backward, format: .bfloat16, params: p, cos: cos, n: n, c: c,
                         labels: labels, gradLoss: gradLoss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_forward_backward_bf16")
public func ammForwardBackwardBF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<UInt16>?
) -> Int32 {
    reportingStatus("amm_forward_backward_bf16") { () throws(ABIError) in
        try HalfLossCall(mode: .forwardBackward, format: .bfloat16, params: p, cos: cos, n: n,
                         c: c, labels: labels, loss: loss, gradCos: gradCos).run()
    }
}

// MARK: - f16 (16-bit storage, computed in f32)

@_cdecl("amm_forward_f16")
public func ammForwardF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_forward_f16") { () throws(ABIError) in
        try HalfLossCall(mode: .forward, format: .float16, params: p, cos: cos, n: n, c: c,
                         labels: labels, loss: loss).run()
    }
}

@_cdecl("amm_backward_f16")
public func ammBackwardF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ gradLoss: UnsafePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<UInt16>?
) -> Int32 {
    reportingStatus("amm_backward_f16") { () throws(ABIError) in
        try HalfLossCall(mode: .backward, format: .float16, params: p, cos: cos, n: n, c: c,
                         labels: labels, gradLoss: gradLoss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_forward_backward_f16")
public func ammForwardBackwardF16(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<UInt16>?, _ n: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?,
    _ gradCos: UnsafeMutablePointer<UInt16>?
) -> Int32 {
    reportingStatus("amm_forward_backward_f16") { () throws(ABIError) in
        try HalfLossCall(mode: .forwardBackward, format: .float16, params: p, cos: cos, n: n,
                         c: c, labels: labels, loss: loss, gradCos: gradCos).run()
    }
}

// MARK: - The fused head

@_cdecl("amm_head_forward_backward_f32")
public func ammHeadForwardBackwardF32(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Float>?,
    _ weights: UnsafePointer<Float>?, _ n: Int64, _ d: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Float>?,
    _ gradEmbeddings: UnsafeMutablePointer<Float>?, _ gradWeights: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_head_forward_backward_f32") { () throws(ABIError) in
        try HeadCall(params: p, embeddings: embeddings, weights: weights, n: n, d: d, c: c,
                     labels: labels, loss: loss, gradEmbeddings: gradEmbeddings,
                     gradWeights: gradWeights).run()
    }
}

@_cdecl("amm_head_forward_backward_f64")
public func ammHeadForwardBackwardF64(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Double>?,
    _ weights: UnsafePointer<Double>?, _ n: Int64, _ d: Int64, _ c: Int64,
    _ labels: UnsafePointer<Int64>?, _ loss: UnsafeMutablePointer<Double>?,
    _ gradEmbeddings: UnsafeMutablePointer<Double>?, _ gradWeights: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_head_forward_backward_f64") { () throws(ABIError) in
        try HeadCall(params: p, embeddings: embeddings, weights: weights, n: n, d: d, c: c,
                     labels: labels, loss: loss, gradEmbeddings: gradEmbeddings,
                     gradWeights: gradWeights).run()
    }
}
