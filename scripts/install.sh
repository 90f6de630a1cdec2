#!/usr/bin/env bash
# Installs the C library for C and C++ users under PREFIX:
#   PREFIX/lib/libAMMSoftmax.so (and libAMMSoftmaxAVX2.so, libAMMSoftmaxAVX512.so, the faster
#       kernel builds it loads from its own folder when the CPU has them),
#   PREFIX/include/amm_softmax.h,
#   PREFIX/lib/pkgconfig/amm-softmax.pc,
#   PREFIX/lib/cmake/AMMSoftmax/AMMSoftmaxConfig.cmake and AMMSoftmaxConfigVersion.cmake
#       (find_package(AMMSoftmax 0.3 REQUIRED) gives the target AMMSoftmax::amm_softmax).
# The libraries are the release build with the Swift runtime linked statically (the build
# setup.py makes for the wheel, in the same .build-wheel folder), so they need neither the Swift
# toolchain nor an OpenBLAS at run time, only the C and C++ runtimes.
#
#   scripts/install.sh PREFIX      (e.g. scripts/install.sh /usr/local, or $HOME/.local)
set -euo pipefail
if (($# != 1)); then
    echo "usage: scripts/install.sh PREFIX" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
PREFIX="$(cd "$1" && pwd)"
if ! command -v swift >/dev/null 2>&1; then
    echo "install: the Swift toolchain (swift 6.x, https://www.swift.org/install/linux/) is needed" \
         "to build the library; it is not on PATH" >&2
    exit 1
fi

version_part() { sed -n "s/^#define AMM_VERSION_$1 \([0-9]*\)$/\1/p" "$ROOT/include/amm_softmax.h"; }
MAJOR="$(version_part MAJOR)" MINOR="$(version_part MINOR)" PATCH="$(version_part PATCH)"
VERSION="$MAJOR.$MINOR.$PATCH"

(cd "$ROOT" && swift build -c release --scratch-path .build-wheel -Xswiftc -static-stdlib)
BUILT="$ROOT/.build-wheel/release"

install -d "$PREFIX/lib" "$PREFIX/include" "$PREFIX/lib/pkgconfig" "$PREFIX/lib/cmake/AMMSoftmax"
for lib in libAMMSoftmax.so libAMMSoftmaxAVX2.so libAMMSoftmaxAVX512.so; do
    install -m 755 "$BUILT/$lib" "$PREFIX/lib/$lib"
done
install -m 644 "$ROOT/include/amm_softmax.h" "$PREFIX/include/amm_softmax.h"
fill() {  # template, destination
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@VERSION_MAJOR@|$MAJOR|g" \
        -e "s|@VERSION_MINOR@|$MINOR|g" "$1" > "$2"
    chmod 644 "$2"
}
fill "$ROOT/cmake/amm-softmax.pc.in" "$PREFIX/lib/pkgconfig/amm-softmax.pc"
fill "$ROOT/cmake/AMMSoftmaxConfig.cmake.in" "$PREFIX/lib/cmake/AMMSoftmax/AMMSoftmaxConfig.cmake"
fill "$ROOT/cmake/AMMSoftmaxConfigVersion.cmake.in" \
     "$PREFIX/lib/cmake/AMMSoftmax/AMMSoftmaxConfigVersion.cmake"
echo "install: amm-softmax $VERSION in $PREFIX"
