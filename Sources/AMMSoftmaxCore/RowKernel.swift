import RealModule

/// The loss of one row and, optionally, its gradient: the unit of work every kernel is made of.
///
/// For row i with target y, z_y = s f(c_y) and z_j = s g(c_j) (j != y), and
/// loss_i = logsumexp_j z_j - z_y. The row is read in two passes: the first computes the row
/// statistics (the running maximum of the negative logits and the sum of their exponentials,
/// updated online, in one read), the second writes the gradient
/// s (p_j - [j == y]) dg/dc_j, p = softmax(z). A row of C = 100,000 floats is 400 KB, so the
/// second pass reads it from cache.
///
/// Precision: the per-element logits, exponentials and gradients are computed in T; the target
/// logit, the sums of exponentials and the row loss in Double. 1 - p_y is computed as
/// (sum of negative exponentials) / (total), not as 1 - p_y, so that a well-classified row keeps
/// full relative precision in its target gradient.
@usableFromInline
struct RowKernel<T: LossScalar> {
    let parameters: LossParameters
    let columns: Int
    let scale: T

    init(parameters: LossParameters, columns: Int) {
        self.parameters = parameters
        self.columns = columns
        self.scale = T(parameters.scale)
    }

    /// What the first pass learns about a row.
    struct Statistics {
        let target: TargetLogit
        let negatives: NegativeLogit<T>
        /// s f(c_y) in Double.
        let targetLogit: Double
        /// The largest logit of the row, and the exponentials relative to it.
        let maximum: Double
        let negativeSum: Double  // sum over j != y of exp(z_j - maximum)
        let targetExp: Double    // exp(z_y - maximum)
        /// The same maximum rounded for the element pass, and exp(maximumT - maximum) / total.
        let negativeMaximum: T
        let negativeFactor: Double

        /// logsumexp(z) - z_y, computed as log1p when the target holds the maximum (a
        /// well-classified row), where it keeps relative precision in a tiny loss.
        var loss: Double {
            if targetLogit >= maximum { return Double.log(onePlus: negativeSum) }
            return Double.log(negativeSum + targetExp) + maximum - targetLogit
        }
    }

    /// The first pass. Returns the row's statistics, or the first non-finite column.
    func statistics(_ row: UnsafePointer<T>, label y: Int) -> Result<Statistics, NonFinite> {
        let cy = row[y]
        guard cy.isFinite else { return .failure(NonFinite(column: y, value: Double(cy))) }
        let target = TargetLogit(cosine: Double(cy), kind: parameters.target,
                                 margin: parameters.margin)
        let negatives = NegativeLogit<T>(kind: parameters.hard, hardMargin: parameters.hardMargin,
                                         target: target)
        // Online maximum and sum over the negatives, in T for the maximum and Double for the sum.
        var maximumT = -T.infinity
        var sum = 0.0
        for j in 0..<columns where j != y {
            let c = row[j]
            guard c.isFinite else { return .failure(NonFinite(column: j, value: Double(c))) }
            let z = scale * negatives.value(c)
            if z > maximumT {
                sum = sum * Double(T.exp(maximumT - z)) + 1
                maximumT = z
            } else {
                sum += Double(T.exp(z - maximumT))
            }
        }
        let targetLogit = parameters.scale * target.value
        let maximum = Swift.max(Double(maximumT), targetLogit)
        let rescale = columns > 1 ? Double.exp(Double(maximumT) - maximum) : 0
        let negativeSum = sum * rescale
        let targetExp = Double.exp(targetLogit - maximum)
        return .success(Statistics(
            target: target, negatives: negatives, targetLogit: targetLogit, maximum: maximum,
            negativeSum: negativeSum, targetExp: targetExp, negativeMaximum: maximumT,
            negativeFactor: rescale / (negativeSum + targetExp)))
    }

    /// The second pass: writes `upstream * dloss_i/dcos_ij` for every j into `gradient`.
    /// `upstream` already holds the reduction's factor (1/count for mean).
    func writeGradient(_ row: UnsafePointer<T>, label y: Int, statistics st: Statistics,
                       upstream: Double, into gradient: UnsafeMutablePointer<T>) {
        let factor = T(upstream * parameters.scale * st.negativeFactor)
        let negatives = st.negatives
        for j in 0..<columns where j != y {
            let c = row[j]
            let z = scale * negatives.value(c)
            gradient[j] = factor * T.exp(z - st.negativeMaximum) * negatives.derivative(c)
        }
        // p_y - 1 = -(negative sum) / total, exact where p_y is close to 1.
        let total = st.negativeSum + st.targetExp
        gradient[y] = T(-upstream * parameters.scale * (st.negativeSum / total)
                        * st.target.derivative)
    }

    /// A non-finite value found in a row.
    struct NonFinite: Error {
        let column: Int
        let value: Double
    }
}
