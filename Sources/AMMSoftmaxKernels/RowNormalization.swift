import AMMSoftmaxMath

/// Row normalisation with torch.nn.functional.normalize's semantics (docs/FORMULATION.md, "Head"):
/// v^ = v / max(||v||, 1e-12), and its backward
/// dv = (dv^ - v^ <v^, dv^>) / ||v|| where ||v|| >= 1e-12, dv = dv^ / 1e-12 otherwise.
/// Norms and inner products are accumulated in Double.
///
/// `@inlinable`, like the row kernels, so that the builds for wider instruction sets compile
/// their own copies: the fused head normalises and back-propagates its class weights (C x D
/// values, twice per call) through the dispatched table (RowKernelTable).
public enum RowNormalization {
    /// The floor on the norm.
    public static let floor = 1e-12

    /// sum_k a_k b_k in Double, in eight interleaved partial sums (added in a fixed order), so
    /// that the loop runs as vector code: a plain running sum would be one long dependency chain.
    @inlinable @inline(__always)
    public static func dot<T: LossScalar>(_ a: UnsafePointer<T>, _ b: UnsafePointer<T>, count: Int)
        -> Double
    {
        var partial = SIMD8<Double>()
        var k = 0
        while k + 8 <= count {
            var x = SIMD8<Double>(), y = SIMD8<Double>()
            for lane in 0..<8 {
                x[lane] = Double(a[k + lane])
                y[lane] = Double(b[k + lane])
            }
            partial += x * y
            k += 8
        }
        var sum = partial.sum()
        while k < count {
            sum += Double(a[k]) * Double(b[k])
            k += 1
        }
        return sum
    }

    /// ||v|| in Double, or nil if v holds a NaN or an infinity. Scales by a power of two (exact)
    /// where the squares would overflow.
    @inlinable @inline(__always)
    public static func norm<T: LossScalar>(_ v: UnsafePointer<T>, dimension: Int) -> Double? {
        var squares = dot(v, v, count: dimension)
        if squares.isFinite { return squares.squareRoot() }
        if (0..<dimension).contains(where: { !v[$0].isFinite }) { return nil }
        var largest = 0.0
        for k in 0..<dimension { largest = Swift.max(largest, abs(Double(v[k]))) }
        let scale = Double(sign: .plus, exponent: -largest.exponent, significand: 1)
        squares = 0
        for k in 0..<dimension { squares += (Double(v[k]) * scale) * (Double(v[k]) * scale) }
        return squares.squareRoot() / scale
    }

    /// Normalises `count` rows of `dimension` values from `rows` into `normalized` and stores
    /// each row's norm in `norms`. Returns the first (row, column) holding NaN or infinity, if
    /// any (the rows after it are then not normalised). Rows for which `skip` is true are
    /// written as zeros and not checked (ignored samples).
    @inlinable
    public static func normalize<T: LossScalar>(
        _ rows: UnsafePointer<T>, count: Int, dimension: Int,
        into normalized: UnsafeMutablePointer<T>, norms: UnsafeMutablePointer<Double>,
        skip: (Int) -> Bool = { _ in false }
    ) -> (row: Int, column: Int, value: Double)? {
        for i in 0..<count {
            let v = rows + i * dimension
            let out = normalized + i * dimension
            if skip(i) {
                out.update(repeating: 0, count: dimension)
                norms[i] = 0
                continue
            }
            guard let n = norm(v, dimension: dimension) else {
                let k = (0..<dimension).first(where: { !v[$0].isFinite })!
                return (i, k, Double(v[k]))
            }
            norms[i] = n
            let inverse = 1 / Swift.max(n, floor)
            for k in 0..<dimension { out[k] = T(Double(v[k]) * inverse) }
        }
        return nil
    }

    /// Turns dv^ (in `gradient`, rows of `dimension`) into dv, in place.
    @inlinable
    public static func backward<T: LossScalar>(
        normalized: UnsafePointer<T>, norms: UnsafePointer<Double>, count: Int, dimension: Int,
        gradient: UnsafeMutablePointer<T>
    ) {
        for i in 0..<count {
            let u = normalized + i * dimension
            let g = gradient + i * dimension
            let n = norms[i]
            let inner = n >= floor ? dot(u, UnsafePointer(g), count: dimension) : 0
            let inverse = 1 / Swift.max(n, floor)
            for k in 0..<dimension { g[k] = T((Double(g[k]) - Double(u[k]) * inner) * inverse) }
        }
    }
}
