import AMMSoftmaxMath

/// The row kernels of one build, as C function pointers, so that a build compiled for another
/// instruction set can live in its own shared library and be chosen at run time
/// (AMMSoftmaxCore/KernelDispatch.swift).
///
/// Why separate libraries: each build specialises the same generic functions, and the
/// specialisations get the same symbol names; linked into one image, the linker would keep one
/// copy for all (an AVX-512 copy could then run on a CPU without AVX-512). In separate images
/// loaded with RTLD_LOCAL, each keeps its own.
///
/// The pointers cross the image boundary with raw pointers to the Swift values (LossParameters,
/// RowStatistics): both sides are compiled from the same sources by the same compiler, so the
/// layouts agree.
public struct RowKernelTable: @unchecked Sendable {  // four immutable C function pointers
    /// (row, columns, label, parameters, weighted exponentials or nil, block references or nil,
    /// whether to count hard negatives, statistics out) -> -1, or the lowest non-finite column.
    public typealias Statistics = @convention(c) (
        UnsafeRawPointer, Int, Int, UnsafeRawPointer, UnsafeMutableRawPointer?,
        UnsafeMutableRawPointer?, Bool, UnsafeMutableRawPointer
    ) -> Int
    /// (columns, label, statistics, block references, upstream, gradient row).
    public typealias Gradient = @convention(c) (
        Int, Int, UnsafeRawPointer, UnsafeRawPointer, Double, UnsafeMutableRawPointer
    ) -> Void

    public var statisticsF32: Statistics
    public var gradientF32: Gradient
    public var statisticsF64: Statistics
    public var gradientF64: Gradient

    public init(statisticsF32: Statistics, gradientF32: Gradient, statisticsF64: Statistics,
                gradientF64: Gradient) {
        self.statisticsF32 = statisticsF32
        self.gradientF32 = gradientF32
        self.statisticsF64 = statisticsF64
        self.gradientF64 = gradientF64
    }

    /// The body of a `Statistics` entry for T; each build's closures call it, which makes the
    /// compiler specialise RowKernel<T> in that build's module, with its CPU flags.
    @inlinable @inline(__always)
    public static func statistics<T: LossScalar>(
        _: T.Type, _ row: UnsafeRawPointer, _ columns: Int, _ label: Int,
        _ parameters: UnsafeRawPointer, _ weighted: UnsafeMutableRawPointer?,
        _ references: UnsafeMutableRawPointer?, _ countHard: Bool,
        _ result: UnsafeMutableRawPointer
    ) -> Int {
        let outcome = RowKernel<T>.statistics(
            row.assumingMemoryBound(to: T.self), columns: columns, label: label,
            parameters: parameters.load(as: LossParameters.self),
            weightedExponentials: weighted?.assumingMemoryBound(to: T.self),
            blockReferences: references?.assumingMemoryBound(to: T.self),
            countHardNegatives: countHard)
        switch outcome {
        case .success(let st):
            result.initializeMemory(as: RowStatistics<T>.self, to: st)
            return -1
        case .failure(let bad):
            return bad.column
        }
    }

    /// The body of a `Gradient` entry for T.
    @inlinable @inline(__always)
    public static func gradient<T: LossScalar>(
        _: T.Type, _ columns: Int, _ label: Int, _ statistics: UnsafeRawPointer,
        _ references: UnsafeRawPointer, _ upstream: Double, _ gradient: UnsafeMutableRawPointer
    ) {
        RowKernel<T>.writeGradient(
            columns: columns, label: label,
            statistics: statistics.load(as: RowStatistics<T>.self),
            blockReferences: references.assumingMemoryBound(to: T.self), upstream: upstream,
            gradient: gradient.assumingMemoryBound(to: T.self))
    }
}
