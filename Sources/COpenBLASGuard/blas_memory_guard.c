/* A lock around the buffer pool of the head's private OpenBLAS (Debian's serial 0.3.21, linked
 * statically: see Package.swift). Its blas_memory_alloc releases its own lock before it scans
 * the pool for a free buffer, so two threads calling cblas_?gemm at once can be handed the same
 * buffer and compute wrong products. The link wraps both pool functions (--wrap), so every call
 * from the archive comes here first; only the lookup is serialised, never a product. */
#include <pthread.h>

#include "amm_blas_memory_guard.h"

void *__real_blas_memory_alloc(int procpos);
void __real_blas_memory_free(void *buffer);

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

/* A fork while another thread holds the lock would leave the child's copy locked forever:
   the lock is taken across fork and released on both sides. */
static void before_fork(void) { pthread_mutex_lock(&pool_lock); }
static void after_fork(void) { pthread_mutex_unlock(&pool_lock); }

__attribute__((constructor)) static void register_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork, after_fork);
}

__attribute__((visibility("hidden"))) void *__wrap_blas_memory_alloc(int procpos)
{
    pthread_mutex_lock(&pool_lock);
    void *buffer = __real_blas_memory_alloc(procpos);
    pthread_mutex_unlock(&pool_lock);
    return buffer;
}

__attribute__((visibility("hidden"))) void __wrap_blas_memory_free(void *buffer)
{
    pthread_mutex_lock(&pool_lock);
    __real_blas_memory_free(buffer);
    pthread_mutex_unlock(&pool_lock);
}

__attribute__((visibility("hidden"))) int amm_blas_memory_guard_linked(void) { return 1; }
