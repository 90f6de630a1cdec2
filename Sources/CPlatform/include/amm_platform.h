/* What Swift cannot ask the platform directly, for choosing a kernel build at run time
 * (Sources/AMMSoftmaxCore/KernelDispatch.swift). Internal to the library; not part of the
 * public C API. */
#ifndef AMM_PLATFORM_H
#define AMM_PLATFORM_H

/* 1 when the CPU and the OS support the x86-64-v4 level (AVX-512 F, BW, CD, DQ, VL), else 0. */
int amm_cpu_supports_x86_64_v4(void);
/* 1 when the CPU and the OS support the x86-64-v3 level (AVX2, FMA, BMI1/2, F16C, ...), else 0. */
int amm_cpu_supports_x86_64_v3(void);

/* The path of the loaded image (shared library or executable) that holds `address`, or NULL.
   The string belongs to the dynamic loader and lives as long as the image is loaded. */
const char *amm_image_path(const void *address);

/* A hint to fetch the cache line holding `address` for reading (no effect on results; a no-op
   where unsupported). Inline, so that the row kernels can issue it from their loops.
   Non-temporal (prefetchnta): the cosines are read once, so they are kept out of the way of
   the gradient row, which a forward_backward call writes and then rewrites from the cache. */
static inline void amm_prefetch(const void *address) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(address, 0, 0);
#else
    (void)address;
#endif
}

/* The same, for a line about to be written (its owner reads it in before the write). */
static inline void amm_prefetch_for_write(const void *address) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(address, 1, 3);
#else
    (void)address;
#endif
}

#endif
