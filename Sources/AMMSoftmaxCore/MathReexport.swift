// The Swift API's types (LossParameters, the variants, LossError, LossScalar) are defined with
// the mathematics; users of AMMSoftmaxCore see them without a second import.
@_exported import AMMSoftmaxMath
