#include </usr/include/x86_64-linux-gnu/openblas-serial/cblas.h>
