import AMMSoftmaxCore
import AMMSoftmaxKernels
import AMMSoftmaxMath

/// The fused head: embeddings x (N x D) and class weights W (C x D) in; the loss on
/// cos = normalize(x) normalize(W)^T, and its gradients with respect to x and W, out
/// (docs/FORMULATION.md, "Head") -- without ever holding the N x C matrix.
///
/// The classes are processed in blocks of B (`blockSize`), as Cut Cross-Entropy does:
/// 1. x^ = normalize(x) (N x D), and each row's target cosine c_y = <x^_i, W^_y> by an indexed
///    dot product, which fixes the row's target logit and its mining threshold up front.
/// 2. First pass, per block: W^_b = normalize(W_b), cos_b = x^ W^_b^T (sgemm/dgemm), and every
///    row's running log-sum-exp updated with its B cosines (RowAccumulator).
/// 3. The row losses and statistics, and the reduction.
/// 4. Second pass, per block: W^_b again, and cos_b -- kept from the first pass for the first
///    blocks, as many as `keepBudget` holds, recomputed for the others -- turned in place into
///    dloss/dcos_b; then dx^ += dcos_b W^_b and dW^_b = dcos_b^T x^ (two more products), and
///    dW_b through the normalisation.
/// 5. dx through the normalisation.
/// Three products of N x D x C multiply-adds, the three the gradient needs, plus the
/// recomputed cosines of the blocks not kept: none while N C elements fit in `keepBudget`
/// (N = 256, C = 98,000 in f32), about a fraction 1 - 96 MiB / (N C element size) beyond. Kept
/// or recomputed, a block's cosines come from the same product calls, so the results do not
/// depend on how many blocks are kept. Keeping them saves a fourth product of the same size as
/// each of the three; the budget trades a fixed amount of memory for it, whatever C is.
///
/// Extra memory: x^ (N x D); the kept cosines (at most `keepBudget` bytes); one block's
/// cosines (N x B, only if some block is not kept) and normalised weights (B x D); and O(N)
/// per-row state. B is chosen so that the block takes at most `blockBudget` bytes:
/// B = min(C, 8192, max(16, blockBudget / ((N + D) * element size)), a multiple of 16), unless
/// given. So the extra memory is at most 96 MiB + 8 MiB + N D elements + O(N) for the
/// automatic block, whatever C is.
public enum HeadKernel {
    /// Bytes a block of cosines and normalised weights may take (automatic block size).
    public static let blockBudget = 8 << 20

    /// Bytes of first-pass cosines kept for the second pass, in whole blocks.
    public static let keepBudget = 96 << 20

    /// How many of the `blocks` blocks of B classes (the first ones) keep their cosines.
    public static func keptBlocks<T>(_: T.Type, rows n: Int, blockSize b: Int, blocks: Int,
                                     budget: Int = keepBudget) -> Int {
        let perBlock = Swift.max(n * b * MemoryLayout<T>.stride, 1)
        return Swift.min(blocks, budget / perBlock)
    }

    /// The block size for a problem: `requested` if positive (at most C), else the rule above.
    public static func blockSize<T>(_: T.Type, rows n: Int, dimension d: Int, classes c: Int,
                                    requested: Int) -> Int {
        if requested > 0 { return Swift.max(1, Swift.min(requested, c)) }  // a shard may hold none
        let perClass = (n + d) * MemoryLayout<T>.stride
        let fitting = Swift.max(16, blockBudget / Swift.max(perClass, 1) / 16 * 16)
        return Swift.max(1, Swift.min(c, 8192, fitting))
    }

    /// Checks a head call's shape: D >= 1, then N >= 0 and C >= 1 with N * C representable, then
    /// every dimension within OpenBLAS's 32-bit indices and N * D, C * D representable.
    public static func validateShape(rows n: Int64, dimension d: Int64,
                                     classes c: Int64) throws(LossError) {
        guard d >= 1 else { throw .shape("d = \(d) is invalid: must be >= 1") }
        try AMMSoftmaxMath.validateShape(rows: Int(n), classes: Int(c))
        for (name, value) in [("n", n), ("d", d), ("c", c)] where value > Int64(Int32.max) {
            throw .shape("\(name) = \(value) is too large: at most \(Int32.max) (OpenBLAS indices)")
        }
        for (name, a, b) in [("n * d", Int(n), Int(d)), ("c * d", Int(c), Int(d))]
            where a.multipliedReportingOverflow(by: b).overflow {
            throw .shape("\(name) = \(a) * \(b) overflows a 64-bit element count")
        }
    }

    /// Checks a requested block size: 0 (the automatic rule) or a positive number of classes.
    public static func validateBlockSize(_ requested: Int64) throws(LossError) {
        guard requested >= 0 else {
            throw .parameter(name: "head_block_size", value: "\(requested)",
                             requirement: ">= 0 (0 = automatic)")
        }
    }

    /// Computes the loss and both gradients (and, if `hardNegatives` is given, each row's
    /// number of negatives mined as hard; if `targetCosines` is, each row's target cosine; 0 for
    /// ignored rows).
    ///
    /// - Precondition: parameters, shape (`validateShape`) and labels are valid; pointers are
    ///   valid for their sizes (nil only for zero elements).
    /// - Throws: `.parameter` for a scale not finite in T; `.nonFiniteInput` for the first NaN
    ///   or infinity in the embeddings of a row that is not ignored, then in the weights;
    ///   `.overflow` for the lowest row whose logits overflow T; `.outputOverflow` for a loss
    ///   or gradient entry beyond T's range.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func run<T: GEMMScalar>(
        parameters: LossParameters, blockSize requested: Int,
        embeddings: UnsafePointer<T>?, weights: UnsafePointer<T>?,
        rows n: Int, dimension d: Int, classes c: Int, labels: UnsafePointer<Int64>?,
        loss: UnsafeMutablePointer<T>?, gradEmbeddings: UnsafeMutablePointer<T>?,
        gradWeights: UnsafeMutablePointer<T>, hardNegatives: UnsafeMutablePointer<Int64>? = nil,
        targetCosines: UnsafeMutablePointer<Double>? = nil, keepBudget keep: Int = keepBudget
    ) throws(LossError) {
        try parameters.validateElementRange(for: T.self)
        do {  // the products run on the private, single-threaded OpenBLAS (GEMM.swift)
            let call = try HeadCallState<T>(
                parameters: parameters, embeddings: embeddings, weights: weights, rows: n,
                dimension: d, classes: c, labels: labels, hardNegatives: hardNegatives)
            defer { call.release() }
            let blocks = try HeadBlocks<T>(call: call, requestedBlockSize: requested,
                                       keepBudget: keep)
            defer { blocks.release() }
            blocks.firstPass(call)
            let statistics = try call.rowLosses(into: loss)
            blocks.secondPass(call, statistics: statistics, gradEmbeddings: gradEmbeddings,
                              gradWeights: gradWeights)
            if let gradEmbeddings {
                RowNormalization.backward(normalized: call.xHat, norms: call.xNorms, count: n,
                                          dimension: d, gradient: gradEmbeddings)
            }
            try call.checkGradients(embeddings: gradEmbeddings, weights: gradWeights)
            targetCosines?.update(from: call.targetCosines, count: n)
        }
    }

    /// The index of the first NaN or infinity among `count` values, if any: `NonFiniteScan`
    /// over fixed chunks spread over the workers, the lowest chunk's finding winning.
    static func firstNonFinite<T: LossScalar>(_ values: UnsafePointer<T>, count: Int,
                                              threads: Int) -> Int? {
        let chunk = 1 << 20
        let chunks = (count + chunk - 1) / chunk
        var found = [Int?](repeating: nil, count: chunks)
        found.withUnsafeMutableBufferPointer { found in
            RowParallel.forEachItem(count: chunks, threads: threads) { index in
                let start = index * chunk
                found[index] = NonFiniteScan.first(values + start,
                                                   count: Swift.min(chunk, count - start))
                    .map { start + $0 }
            }
        }
        return found.lazy.compactMap { $0 }.first
    }
}
