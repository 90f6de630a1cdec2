/* The CVectorMath arithmetic as the AVX512 kernel build compiles it: amm_avx512_* (see
 * ../../../CVectorMathProbes/probe_declarations.h). */
#ifndef AMM_VECTOR_MATH_AVX512_PROBE_H
#define AMM_VECTOR_MATH_AVX512_PROBE_H
#define AMM_PROBE(name) amm_avx512_##name
#include "../../CVectorMathProbes/probe_declarations.h"
#undef AMM_PROBE
#endif
