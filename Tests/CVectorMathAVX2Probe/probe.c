#include "amm_vector_math_avx2_probe.h"

#define AMM_PROBE(name) amm_avx2_##name
#include "../CVectorMathProbes/probe_body.h"
