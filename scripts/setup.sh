#!/usr/bin/env bash
# Brings a fresh machine of this project's kind to the point where the library is built and the
# Python side can use and test it: the C compilers, OpenBLAS and Open MPI (Debian), NumPy,
# pytest and mpi4py (PyPI), then the release build of libAMMSoftmax.so (and its AVX2/AVX-512
# companions).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1; then
    echo "setup: the Swift toolchain (swift 6.x) is not on PATH; install it first" >&2
    exit 1
fi

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
# OpenBLAS for the fused head's matrix products: Debian's serial build, whose static archive the
# library links privately (libopenblas-serial-dev).
dpkg -s libopenblas-serial-dev >/dev/null 2>&1 || missing+=(libopenblas-serial-dev)
# Open MPI (mpirun, and mpicc with the headers for mpi4py's build) for amm_softmax.mpi's tests.
dpkg -s openmpi-bin >/dev/null 2>&1 || missing+=(openmpi-bin)
dpkg -s libopenmpi-dev >/dev/null 2>&1 || missing+=(libopenmpi-dev)
# CMake and pkg-config: scripts/test_install.sh builds C and C++ programs against an installed
# prefix with each.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} from Debian"
    apt-get update
    apt-get install -y "${missing[@]}"
fi

python3 -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt

swift build -c release
