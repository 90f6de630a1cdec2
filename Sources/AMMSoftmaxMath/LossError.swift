/// Why a call was refused. Each case names what was wrong, where, and the value found, so that
/// the message alone lets a user find the bad entry.
public enum LossError: Error, Equatable, CustomStringConvertible {
    /// A parameter outside its domain.
    case parameter(name: String, value: String, requirement: String)
    /// A matrix shape that cannot be used (negative rows, no classes, a size overflow, ...).
    case shape(String)
    /// `labels[row]` is neither a class index in [0, classes) nor the ignore index.
    case label(row: Int, value: Int64, classes: Int, ignoreIndex: Int64)
    /// `cos[row, column]` is NaN or infinite in a row that is not ignored.
    case nonFiniteCosine(row: Int, column: Int, value: Double)
    /// `name[row, column]` (embeddings or weights of the fused head) is NaN or infinite.
    case nonFiniteInput(name: String, row: Int, column: Int, value: Double)
    /// The upstream gradient (called `name` by the caller's API) holds NaN or infinity at
    /// `index`.
    case nonFiniteGradOutput(name: String, index: Int, value: Double)
    /// The logits of `row` overflow the element type (s f(c_y) or s g(c_j) beyond its largest
    /// finite value, about 3.4e38 for Float), so that its loss is not a number.
    case overflow(row: Int, elementType: String, largest: Double)
    /// `name[index]`, an entry of a per-row input (the sharded phases' target cosines and
    /// global statistics), is outside its domain.
    case invalidEntry(name: String, index: Int, value: Double, requirement: String)
    /// An output (`name`, e.g. "grad_cos[2, 5]" or "loss (the sum over rows)") is beyond the
    /// element type's range although every input is valid: an error, never an infinity.
    case outputOverflow(name: String, elementType: String, largest: Double)
    /// Scratch memory could not be allocated.
    case allocation(bytes: Int)

    public var description: String {
        switch self {
        case let .parameter(name, value, requirement):
            return "parameter \(name) = \(value) is invalid: must be \(requirement)"
        case let .shape(message):
            return message
        case let .label(row, value, classes, ignoreIndex):
            return "labels[\(row)] = \(value) is out of range: must be in [0, \(classes)) "
                + "or equal ignore_index (\(ignoreIndex))"
        case let .nonFiniteCosine(row, column, value):
            return "cos[\(row), \(column)] = \(value) is not finite (row \(row) is not ignored)"
        case let .nonFiniteInput(name, row, column, value):
            return "\(name)[\(row), \(column)] = \(value) is not finite"
        case let .nonFiniteGradOutput(name, index, value):
            return "\(name)[\(index)] = \(value) is not finite"
        case let .overflow(row, type, largest):
            return "the logits of row \(row) overflow \(type): scale * f(cos_y) or "
                + "scale * g(cos_j) exceeds \(largest); "
                + "lower scale, or bring cos into [-1, 1]"
        case let .invalidEntry(name, index, value, requirement):
            return "\(name)[\(index)] = \(value) is invalid: must be \(requirement)"
        case let .outputOverflow(name, type, largest):
            return "\(name) overflows \(type): its value exceeds \(largest); lower scale "
                + "(or the upstream gradient)"
        case let .allocation(bytes):
            return "could not allocate \(bytes) bytes of scratch memory"
        }
    }
}

extension LossError {
    /// `.outputOverflow` of an output of element type T.
    public static func outputOverflow<T: BinaryFloatingPoint>(_ name: String, _: T.Type)
        -> LossError
    {
        .outputOverflow(name: name, elementType: "\(T.self)",
                        largest: Double(T.greatestFiniteMagnitude))
    }
}

/// Checks that every label is a class index or the ignore index; throws for the first that is
/// not. O(N), done before any computation.
public func validateLabels<Labels: Collection>(
    _ labels: Labels, classes: Int, ignoreIndex: Int64
) throws(LossError) where Labels.Element == Int64 {
    for (row, label) in labels.enumerated() where label != ignoreIndex {
        guard label >= 0, label < Int64(classes) else {
            throw .label(row: row, value: label, classes: classes, ignoreIndex: ignoreIndex)
        }
    }
}

/// Checks that every value of an upstream gradient is finite; throws for the first that is not.
/// `name` is what the caller's interface calls it (grad_output in Swift, grad_loss in C).
public func validateGradOutput<Values: Collection>(
    _ values: Values, name: String = "grad_output"
) throws(LossError) where Values.Element: BinaryFloatingPoint {
    for (index, value) in values.enumerated() where !value.isFinite {
        throw .nonFiniteGradOutput(name: name, index: index, value: Double(value))
    }
}

/// Checks the shape of an N x C problem: N >= 0, C >= 1, and N * C representable.
public func validateShape(rows: Int, classes: Int) throws(LossError) {
    guard rows >= 0 else { throw .shape("n = \(rows) is invalid: must be >= 0") }
    guard classes >= 1 else { throw .shape("c = \(classes) is invalid: must be >= 1") }
    guard !rows.multipliedReportingOverflow(by: classes).overflow else {
        throw .shape("n * c = \(rows) * \(classes) overflows a 64-bit element count")
    }
}
