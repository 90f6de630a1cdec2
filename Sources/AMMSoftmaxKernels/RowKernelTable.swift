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
/// RowStatistics), whose layouts agree only when both sides come from the same sources and
/// compiler. So a build library and the dispatcher exchange a `handshake` (this type's
/// `abiVersion` and size) before a table crosses, and a library whose handshake differs is
/// refused: a stale build left beside a newer core falls back instead of corrupting memory.
public struct RowKernelTable: @unchecked Sendable {  // immutable C function pointers
    /// Raise on any change to this table, to the types its entries pass by raw pointer
    /// (LossParameters, RowStatistics, RowAccumulator, GradientStream), or to what an entry
    /// means.
    public static let abiVersion: UInt64 = 3

    /// What a build library answers to the handshake: `abiVersion` in the high 32 bits, the
    /// table's size in bytes in the low 32.
    public static var handshake: UInt64 {
        abiVersion << 32 | UInt64(MemoryLayout<RowKernelTable>.size)
    }

    /// The one symbol each build library exports. Its function takes the caller's table
    /// storage, that storage's size and the caller's handshake; it fills the table only when
    /// both match its own, and always returns its own handshake, which the caller compares.
    /// (A library from before the handshake lacks the symbol, and is refused for that.)
    public static func fillSymbol(_ build: String) -> String {
        "amm_internal_row_kernels_fill_\(build)"
    }

    /// The body of a build library's fill function.
    @inlinable @inline(__always)
    public static func fill(_ table: UnsafeMutableRawPointer, size: Int,
                            handshake theirs: UInt64) -> UInt64 {
        if theirs == handshake && size == MemoryLayout<RowKernelTable>.size {
            table.storeBytes(of: RowKernelTable.compiledHere(), as: RowKernelTable.self)
        }
        return handshake
    }
    /// (row, columns, label, parameters, weighted exponentials or nil, block references or nil,
    /// whether to count hard negatives, a GradientStream to advance or nil, statistics out)
    /// -> -1, or the lowest non-finite column.
    public typealias Statistics = @convention(c) (
        UnsafeRawPointer, Int, Int, UnsafeRawPointer, UnsafeMutableRawPointer?,
        UnsafeMutableRawPointer?, Bool, UnsafeMutableRawPointer?, UnsafeMutableRawPointer
    ) -> Int
    /// (columns, label, statistics, block references, upstream, gradient row).
    public typealias Gradient = @convention(c) (
        Int, Int, UnsafeRawPointer, UnsafeRawPointer, Double, UnsafeMutableRawPointer
    ) -> Void

    /// The statistics pass over a row stored in 16 bits, computed in Float: (row, storage
    /// (`HalfStorage.rawValue`), a block buffer of RowKernel.blockSize Floats, columns, label,
    /// parameters, weighted exponentials (Float) or nil, block references or nil, whether to
    /// count hard negatives, a GradientStream (of a 16-bit row) to advance or nil, statistics
    /// out) -> -1, or the lowest non-finite column.
    public typealias HalfStatistics = @convention(c) (
        UnsafeRawPointer, Int32, UnsafeMutableRawPointer, Int, Int, UnsafeRawPointer,
        UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, Bool, UnsafeMutableRawPointer?,
        UnsafeMutableRawPointer
    ) -> Int
    /// Its gradient pass (`RowKernel<Float>.writeGradient(...storage:into:)`): (columns, label,
    /// statistics, block references, upstream, weighted exponentials, storage, 16-bit gradient
    /// row) -> -1, or the lowest column whose rounded gradient is not finite.
    public typealias HalfGradient = @convention(c) (
        Int, Int, UnsafeRawPointer, UnsafeRawPointer, Double, UnsafeRawPointer, Int32,
        UnsafeMutableRawPointer
    ) -> Int

    /// The fused head's first pass over one row of a block of cosines: (RowAccumulator<T>,
    /// cosines, count, the target's column relative to them, scratch of RowKernel.blockSize
    /// values).
    public typealias Accumulate = @convention(c) (
        UnsafeMutableRawPointer, UnsafeRawPointer, Int, Int, UnsafeMutableRawPointer
    ) -> Void
    /// The fused head's second pass (`RowKernel.writeGradientSegment`): (cosines, count,
    /// target column relative to them, statistics, upstream, out; out may equal cosines).
    public typealias Segment = @convention(c) (
        UnsafeRawPointer, Int, Int, UnsafeRawPointer, Double, UnsafeMutableRawPointer
    ) -> Void

    /// Row normalisation of finite rows (`RowNormalization.normalize`): (rows, count,
    /// dimension, normalised rows out, norms out).
    public typealias Normalize = @convention(c) (
        UnsafeRawPointer, Int, Int, UnsafeMutableRawPointer, UnsafeMutablePointer<Double>
    ) -> Void
    /// Its backward (`RowNormalization.backward`): (normalised rows, norms, count, dimension,
    /// gradient in and out).
    public typealias NormalizeBackward = @convention(c) (
        UnsafeRawPointer, UnsafePointer<Double>, Int, Int, UnsafeMutableRawPointer
    ) -> Void

    public var statisticsF32: Statistics
    public var gradientF32: Gradient
    public var statisticsF64: Statistics
    public var gradientF64: Gradient
    public var accumulateF32: Accumulate
    public var segmentF32: Segment
    public var accumulateF64: Accumulate
    public var segmentF64: Segment
    public var normalizeF32: Normalize
    public var normalizeBackwardF32: NormalizeBackward
    public var normalizeF64: Normalize
    public var normalizeBackwardF64: NormalizeBackward
    public var statisticsHalf: HalfStatistics
    public var gradientHalf: HalfGradient

    public init(statisticsF32: Statistics, gradientF32: Gradient, statisticsF64: Statistics,
                gradientF64: Gradient, accumulateF32: Accumulate, segmentF32: Segment,
                accumulateF64: Accumulate, segmentF64: Segment, normalizeF32: Normalize,
                normalizeBackwardF32: NormalizeBackward, normalizeF64: Normalize,
                normalizeBackwardF64: NormalizeBackward, statisticsHalf: HalfStatistics,
                gradientHalf: HalfGradient) {
        self.statisticsF32 = statisticsF32
        self.gradientF32 = gradientF32
        self.statisticsF64 = statisticsF64
        self.gradientF64 = gradientF64
        self.accumulateF32 = accumulateF32
        self.segmentF32 = segmentF32
        self.accumulateF64 = accumulateF64
        self.segmentF64 = segmentF64
        self.normalizeF32 = normalizeF32
        self.normalizeBackwardF32 = normalizeBackwardF32
        self.normalizeF64 = normalizeF64
        self.normalizeBackwardF64 = normalizeBackwardF64
        self.statisticsHalf = statisticsHalf
        self.gradientHalf = gradientHalf
    }

    /// The table of the build that compiles this call: every entry specialised in the caller's
    /// module, with its CPU flags.
    @inlinable @inline(__always)
    public static func compiledHere() -> RowKernelTable {
        typealias K = RowKernelTable
        return RowKernelTable(
            statisticsF32: { K.statistics(Float.self, $0, $1, $2, $3, $4, $5, $6, $7, $8) },
            gradientF32: { K.gradient(Float.self, $0, $1, $2, $3, $4, $5) },
            statisticsF64: { K.statistics(Double.self, $0, $1, $2, $3, $4, $5, $6, $7, $8) },
            gradientF64: { K.gradient(Double.self, $0, $1, $2, $3, $4, $5) },
            accumulateF32: { K.accumulate(Float.self, $0, $1, $2, $3, $4) },
            segmentF32: { K.segment(Float.self, $0, $1, $2, $3, $4, $5) },
            accumulateF64: { K.accumulate(Double.self, $0, $1, $2, $3, $4) },
            segmentF64: { K.segment(Double.self, $0, $1, $2, $3, $4, $5) },
            normalizeF32: { K.normalize(Float.self, $0, $1, $2, $3, $4) },
            normalizeBackwardF32: { K.normalizeBackward(Float.self, $0, $1, $2, $3, $4) },
            normalizeF64: { K.normalize(Double.self, $0, $1, $2, $3, $4) },
            normalizeBackwardF64: { K.normalizeBackward(Double.self, $0, $1, $2, $3, $4) },
            statisticsHalf: { K.halfStatistics($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10) },
            gradientHalf: { K.halfGradient($0, $1, $2, $3, $4, $5, $6, $7) })
    }

    /// The body of a `HalfStatistics` entry.
    @inlinable @inline(__always)
    public static func halfStatistics(
        _ row: UnsafeRawPointer, _ storage: Int32, _ blockBuffer: UnsafeMutableRawPointer,
        _ columns: Int, _ label: Int, _ parameters: UnsafeRawPointer,
        _ weighted: UnsafeMutableRawPointer?, _ references: UnsafeMutableRawPointer?,
        _ countHard: Bool, _ stream: UnsafeMutableRawPointer?, _ result: UnsafeMutableRawPointer
    ) -> Int {
        let cosines = HalfStorageCosines(
            row.assumingMemoryBound(to: UInt16.self), storage: HalfStorage(rawValue: storage)!,
            blockBuffer: blockBuffer.assumingMemoryBound(to: Float.self))
        let outcome = RowKernel<Float>.statistics(
            cosines, columns: columns, label: label,
            parameters: parameters.load(as: LossParameters.self),
            weightedExponentials: weighted?.assumingMemoryBound(to: Float.self),
            blockReferences: references?.assumingMemoryBound(to: Float.self),
            countHardNegatives: countHard,
            stream: stream?.assumingMemoryBound(to: GradientStream.self))
        switch outcome {
        case .success(let st):
            result.initializeMemory(as: RowStatistics<Float>.self, to: st)
            return -1
        case .failure(let bad):
            return bad.column
        }
    }

    /// The body of a `HalfGradient` entry.
    @inlinable @inline(__always)
    public static func halfGradient(
        _ columns: Int, _ label: Int, _ statistics: UnsafeRawPointer,
        _ references: UnsafeRawPointer, _ upstream: Double, _ weighted: UnsafeRawPointer,
        _ storage: Int32, _ out: UnsafeMutableRawPointer
    ) -> Int {
        RowKernel<Float>.writeGradient(
            columns: columns, label: label,
            statistics: statistics.load(as: RowStatistics<Float>.self),
            blockReferences: references.assumingMemoryBound(to: Float.self), upstream: upstream,
            weightedExponentials: weighted.assumingMemoryBound(to: Float.self),
            storage: HalfStorage(rawValue: storage)!,
            into: out.assumingMemoryBound(to: UInt16.self))
    }

    /// The body of a `Statistics` entry for T; each build's closures call it, which makes the
    /// compiler specialise RowKernel<T> in that build's module, with its CPU flags.
    @inlinable @inline(__always)
    public static func statistics<T: LossScalar>(
        _: T.Type, _ row: UnsafeRawPointer, _ columns: Int, _ label: Int,
        _ parameters: UnsafeRawPointer, _ weighted: UnsafeMutableRawPointer?,
        _ references: UnsafeMutableRawPointer?, _ countHard: Bool,
        _ stream: UnsafeMutableRawPointer?, _ result: UnsafeMutableRawPointer
    ) -> Int {
        let outcome = RowKernel<T>.statistics(
            row.assumingMemoryBound(to: T.self), columns: columns, label: label,
            parameters: parameters.load(as: LossParameters.self),
            weightedExponentials: weighted?.assumingMemoryBound(to: T.self),
            blockReferences: references?.assumingMemoryBound(to: T.self),
            countHardNegatives: countHard,
            stream: stream?.assumingMemoryBound(to: GradientStream.self))
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

    /// The body of an `Accumulate` entry for T: the row's cosines fed to its accumulator in
    /// blocks of RowKernel.blockSize.
    @inlinable @inline(__always)
    public static func accumulate<T: LossScalar>(
        _: T.Type, _ accumulator: UnsafeMutableRawPointer, _ cosines: UnsafeRawPointer,
        _ count: Int, _ target: Int, _ scratch: UnsafeMutableRawPointer
    ) {
        let rows = accumulator.assumingMemoryBound(to: RowAccumulator<T>.self)
        let values = cosines.assumingMemoryBound(to: T.self)
        let buffer = scratch.assumingMemoryBound(to: T.self)
        var start = 0
        while start < count {
            let size = Swift.min(RowKernel<T>.blockSize, count - start)
            _ = rows.pointee.add(values + start, count: size, target: target - start,
                                 into: buffer, slopes: nil)
            start += size
        }
    }

    /// The body of a `Segment` entry for T.
    @inlinable @inline(__always)
    public static func segment<T: LossScalar>(
        _: T.Type, _ cosines: UnsafeRawPointer, _ count: Int, _ target: Int,
        _ statistics: UnsafeRawPointer, _ upstream: Double, _ out: UnsafeMutableRawPointer
    ) {
        RowKernel<T>.writeGradientSegment(
            cosines.assumingMemoryBound(to: T.self), count: count, target: target,
            statistics: statistics.load(as: RowStatistics<T>.self), upstream: upstream,
            into: out.assumingMemoryBound(to: T.self))
    }

    /// The body of a `Normalize` entry for T.
    @inlinable @inline(__always)
    public static func normalize<T: LossScalar>(
        _: T.Type, _ rows: UnsafeRawPointer, _ count: Int, _ dimension: Int,
        _ out: UnsafeMutableRawPointer, _ norms: UnsafeMutablePointer<Double>
    ) {
        _ = RowNormalization.normalize(rows.assumingMemoryBound(to: T.self), count: count,
                                       dimension: dimension,
                                       into: out.assumingMemoryBound(to: T.self), norms: norms)
    }

    /// The body of a `NormalizeBackward` entry for T.
    @inlinable @inline(__always)
    public static func normalizeBackward<T: LossScalar>(
        _: T.Type, _ normalized: UnsafeRawPointer, _ norms: UnsafePointer<Double>, _ count: Int,
        _ dimension: Int, _ gradient: UnsafeMutableRawPointer
    ) {
        RowNormalization.backward(normalized: normalized.assumingMemoryBound(to: T.self),
                                  norms: norms, count: count, dimension: dimension,
                                  gradient: gradient.assumingMemoryBound(to: T.self))
    }
}
