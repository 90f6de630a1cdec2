/* Header-only (include/amm_vector_math.h); SwiftPM needs one source file per C target. */
