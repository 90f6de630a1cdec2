#define _GNU_SOURCE  /* dladdr */
#include <dlfcn.h>
#include <stddef.h>

#include "amm_platform.h"

const char *amm_image_path(const void *address) {
    Dl_info info;
    if (dladdr(address, &info) == 0) return NULL;
    return info.dli_fname;
}
