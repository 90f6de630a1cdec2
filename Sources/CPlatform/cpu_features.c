#include "amm_platform.h"

/* __builtin_cpu_supports reads CPUID and checks that the OS saves the wider registers (XGETBV),
   once, in the compiler runtime's constructor. Swift has no such intrinsic, hence this file. */
int amm_cpu_supports_x86_64_v4(void) {
#if defined(__x86_64__)
    return __builtin_cpu_supports("x86-64-v4") ? 1 : 0;
#else
    return 0;
#endif
}

int amm_cpu_supports_x86_64_v3(void) {
#if defined(__x86_64__)
    return __builtin_cpu_supports("x86-64-v3") ? 1 : 0;
#else
    return 0;
#endif
}
