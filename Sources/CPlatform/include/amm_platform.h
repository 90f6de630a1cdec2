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

#endif
