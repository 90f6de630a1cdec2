/* The CVectorMath arithmetic as the AVX2 kernel build compiles it: amm_avx2_* (see
 * ../../../CVectorMathProbes/probe_declarations.h). */
#ifndef AMM_VECTOR_MATH_AVX2_PROBE_H
#define AMM_VECTOR_MATH_AVX2_PROBE_H
#define AMM_PROBE(name) amm_avx2_##name
#include "../../CVectorMathProbes/probe_declarations.h"
#undef AMM_PROBE
#endif
