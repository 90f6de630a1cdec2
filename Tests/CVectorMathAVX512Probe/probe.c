#include "amm_vector_math_avx512_probe.h"

#define AMM_PROBE(name) amm_avx512_##name
#include "../CVectorMathProbes/probe_body.h"
