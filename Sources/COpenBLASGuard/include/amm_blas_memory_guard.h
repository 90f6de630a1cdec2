#ifndef AMM_BLAS_MEMORY_GUARD_H
#define AMM_BLAS_MEMORY_GUARD_H
/* Referenced by the head so that the guard's object (and its --wrap targets) is always linked. */
int amm_blas_memory_guard_linked(void);
#endif
