import AMMSoftmaxCore
import CAMMSoftmax

// The sharded phases' C entry points (include/amm_softmax.h, "Sharding by class"): each only
// forwards to ShardCall (validation, then the phase) and turns the outcome into a status code.

@_cdecl("amm_shard_rescale_sums")
public func ammShardRescaleSums(
    _ n: Int64, _ rowMax: UnsafePointer<Double>?, _ globalMax: UnsafePointer<Double>?,
    _ rowSum: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_rescale_sums") { () throws(ABIError) in
        guard n >= 0 else { throw ABIError(AMM_ERR_SHAPE, "n = \(n) is invalid: must be >= 0") }
        try require(rowMax, "row_max", elements: Int(n))
        try require(globalMax, "global_max", elements: Int(n))
        try require(rowSum, "row_sum", elements: Int(n))
        ShardKernels.rescaleSums(rows: Int(n), rowMax: rowMax, globalMax: globalMax,
                                 rowSum: rowSum)
    }
}

// MARK: - f32

@_cdecl("amm_shard_target_f32")
public func ammShardTargetF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_target_f32") { () throws(ABIError) in
        try ShardCall(phase: .target, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: targetCos).run()
    }
}

@_cdecl("amm_shard_statistics_f32")
public func ammShardStatisticsF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ rowMax: UnsafeMutablePointer<Double>?,
    _ rowSum: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_statistics_f32") { () throws(ABIError) in
        try ShardCall(phase: .statistics, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos), rowMax: rowMax,
                      rowSum: rowSum).run()
    }
}

@_cdecl("amm_shard_gradient_f32")
public func ammShardGradientF32(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Float>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ globalMax: UnsafePointer<Double>?,
    _ globalSum: UnsafePointer<Double>?, _ gradLoss: UnsafePointer<Float>?,
    _ loss: UnsafeMutablePointer<Float>?, _ gradCos: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_shard_gradient_f32") { () throws(ABIError) in
        try ShardCall(phase: .gradient, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos),
                      globalMax: globalMax, globalSum: globalSum, gradLoss: gradLoss,
                      loss: loss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_shard_head_target_f32")
public func ammShardHeadTargetF32(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Float>?,
    _ weights: UnsafePointer<Float>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_head_target_f32") { () throws(ABIError) in
        try ShardCall(phase: .target, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels, targetCos: targetCos).run()
    }
}

@_cdecl("amm_shard_head_statistics_f32")
public func ammShardHeadStatisticsF32(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Float>?,
    _ weights: UnsafePointer<Float>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ rowMax: UnsafeMutablePointer<Double>?,
    _ rowSum: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_head_statistics_f32") { () throws(ABIError) in
        try ShardCall(phase: .statistics, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos), rowMax: rowMax,
                      rowSum: rowSum).run()
    }
}

@_cdecl("amm_shard_head_gradient_f32")
public func ammShardHeadGradientF32(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Float>?,
    _ weights: UnsafePointer<Float>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ globalMax: UnsafePointer<Double>?,
    _ globalSum: UnsafePointer<Double>?, _ loss: UnsafeMutablePointer<Float>?,
    _ gradEmbeddings: UnsafeMutablePointer<Float>?, _ gradWeights: UnsafeMutablePointer<Float>?
) -> Int32 {
    reportingStatus("amm_shard_head_gradient_f32") { () throws(ABIError) in
        try ShardCall(phase: .gradient, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos),
                      globalMax: globalMax, globalSum: globalSum, loss: loss,
                      gradEmbeddings: gradEmbeddings, gradWeights: gradWeights).run()
    }
}

// MARK: - f64

@_cdecl("amm_shard_target_f64")
public func ammShardTargetF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_target_f64") { () throws(ABIError) in
        try ShardCall(phase: .target, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: targetCos).run()
    }
}

@_cdecl("amm_shard_statistics_f64")
public func ammShardStatisticsF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ rowMax: UnsafeMutablePointer<Double>?,
    _ rowSum: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_statistics_f64") { () throws(ABIError) in
        try ShardCall(phase: .statistics, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos), rowMax: rowMax,
                      rowSum: rowSum).run()
    }
}

@_cdecl("amm_shard_gradient_f64")
public func ammShardGradientF64(
    _ p: UnsafePointer<amm_params>?, _ cos: UnsafePointer<Double>?, _ n: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ globalMax: UnsafePointer<Double>?,
    _ globalSum: UnsafePointer<Double>?, _ gradLoss: UnsafePointer<Double>?,
    _ loss: UnsafeMutablePointer<Double>?, _ gradCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_gradient_f64") { () throws(ABIError) in
        try ShardCall(phase: .gradient, params: p, cos: cos, n: n, cLocal: cLocal,
                      classStart: classStart, cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos),
                      globalMax: globalMax, globalSum: globalSum, gradLoss: gradLoss,
                      loss: loss, gradCos: gradCos).run()
    }
}

@_cdecl("amm_shard_head_target_f64")
public func ammShardHeadTargetF64(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Double>?,
    _ weights: UnsafePointer<Double>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_head_target_f64") { () throws(ABIError) in
        try ShardCall(phase: .target, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels, targetCos: targetCos).run()
    }
}

@_cdecl("amm_shard_head_statistics_f64")
public func ammShardHeadStatisticsF64(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Double>?,
    _ weights: UnsafePointer<Double>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ rowMax: UnsafeMutablePointer<Double>?,
    _ rowSum: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_head_statistics_f64") { () throws(ABIError) in
        try ShardCall(phase: .statistics, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos), rowMax: rowMax,
                      rowSum: rowSum).run()
    }
}

@_cdecl("amm_shard_head_gradient_f64")
public func ammShardHeadGradientF64(
    _ p: UnsafePointer<amm_params>?, _ embeddings: UnsafePointer<Double>?,
    _ weights: UnsafePointer<Double>?, _ n: Int64, _ d: Int64, _ cLocal: Int64,
    _ classStart: Int64, _ cTotal: Int64, _ labels: UnsafePointer<Int64>?,
    _ targetCos: UnsafePointer<Double>?, _ globalMax: UnsafePointer<Double>?,
    _ globalSum: UnsafePointer<Double>?, _ loss: UnsafeMutablePointer<Double>?,
    _ gradEmbeddings: UnsafeMutablePointer<Double>?, _ gradWeights: UnsafeMutablePointer<Double>?
) -> Int32 {
    reportingStatus("amm_shard_head_gradient_f64") { () throws(ABIError) in
        try ShardCall(phase: .gradient, params: p, embeddings: embeddings, weights: weights,
                      isHead: true, n: n, d: d, cLocal: cLocal, classStart: classStart,
                      cTotal: cTotal, labels: labels,
                      targetCos: UnsafeMutablePointer(mutating: targetCos),
                      globalMax: globalMax, globalSum: globalSum, loss: loss,
                      gradEmbeddings: gradEmbeddings, gradWeights: gradWeights).run()
    }
}
