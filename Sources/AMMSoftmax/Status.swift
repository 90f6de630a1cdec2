import AMMSoftmaxCore
import CAMMSoftmax

/// A refused call at the ABI boundary: the status code the caller gets and the message behind
/// amm_last_error().
struct ABIError: Error {
    let status: amm_status
    let message: String

    init(_ status: amm_status, _ message: String) {
        self.status = status
        self.message = message
    }

    /// The status each kind of core error maps to (see the header for their meaning).
    init(_ error: LossError) {
        let status: amm_status
        switch error {
        case .parameter: status = AMM_ERR_PARAM
        case .shape: status = AMM_ERR_SHAPE
        case .label: status = AMM_ERR_LABEL
        case .nonFiniteCosine, .nonFiniteInput, .nonFiniteGradOutput:
            status = AMM_ERR_NONFINITE
        case let .invalidEntry(_, _, value, _):
            status = value.isFinite ? AMM_ERR_PARAM : AMM_ERR_NONFINITE
        case .overflow, .outputOverflow: status = AMM_ERR_OVERFLOW
        case .allocation: status = AMM_ERR_ALLOC
        }
        self.init(status, error.description)
    }
}

/// Checks a pointer argument: it may be NULL only when it addresses zero elements.
func require(_ pointer: UnsafeRawPointer?, _ name: String, elements: Int) throws(ABIError) {
    guard pointer == nil, elements > 0 else { return }
    throw ABIError(AMM_ERR_NULL_POINTER, "\(name) is NULL but must hold \(elements) values")
}

/// Runs an ABI call: returns AMM_OK, or records the message of a refused call for this thread
/// and returns its status. The only place a status code is made.
@inline(__always)
func reportingStatus(_ function: StaticString, _ body: () throws(ABIError) -> Void) -> Int32 {
    do {
        try body()
        return Int32(AMM_OK.rawValue)
    } catch {
        LastError.set("\(function): \(error.message)")
        return Int32(error.status.rawValue)
    }
}

/// The names behind `amm_status_name`, as static C strings.
enum StatusName {
    static func of(_ status: Int32) -> StaticString {
        switch UInt32(bitPattern: status) {
        case AMM_OK.rawValue: return "AMM_OK"
        case AMM_ERR_NULL_POINTER.rawValue: return "AMM_ERR_NULL_POINTER"
        case AMM_ERR_SHAPE.rawValue: return "AMM_ERR_SHAPE"
        case AMM_ERR_LABEL.rawValue: return "AMM_ERR_LABEL"
        case AMM_ERR_PARAM.rawValue: return "AMM_ERR_PARAM"
        case AMM_ERR_NONFINITE.rawValue: return "AMM_ERR_NONFINITE"
        case AMM_ERR_ALLOC.rawValue: return "AMM_ERR_ALLOC"
        case AMM_ERR_INTERNAL.rawValue: return "AMM_ERR_INTERNAL"
        case AMM_ERR_OVERFLOW.rawValue: return "AMM_ERR_OVERFLOW"
        default: return "AMM_ERR_UNKNOWN"
        }
    }
}
