#!/usr/bin/env bash
# Installs the package as a new user would and uses it from elsewhere, without the Swift
# toolchain (issue 15, "Installs anywhere"):
# - the sdist: built from a clean copy of this checkout; `pip install` of it fails, saying what
#   to install, where Swift is not on PATH; installed from its unpacked folder where it is (the
#   one Swift build of this script), then the quick start;
# - the wheel: `pip wheel` of the same folder, `auditwheel show` must name a manylinux tag and
#   `auditwheel repair` must pass; the repaired wheel goes into a fresh environment, which runs
#   the quick start (the loss and the head) with the toolchain and the system's OpenBLAS hidden
#   from the loader, NumPy and the library together (Tests/install/numpy_together.py),
#   `python -m amm_softmax info`, and mypy --strict on a user's script against the installed
#   package (its py.typed);
# - C and C++: scripts/install.sh into a prefix, then examples/c/example.c and
#   Tests/install/consumer.cpp built against that prefix with CMake (find_package) and with
#   pkg-config, and run with the toolchain hidden;
# - Swift: Tests/SwiftConsumer, a package of its own depending on the copy by path, built and run.
# Each quick start runs from another folder with LD_LIBRARY_PATH unset. Hiding uses a private
# mount namespace where the machine allows one (else ldd checks that nothing points into the
# toolchain). Prints "install: ok" last.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar cf -) | (mkdir -p "$WORK/src" && tar xf - -C "$WORK/src")
TOOLCHAIN="$(dirname "$(dirname "$(command -v swift)")")"   # e.g. /opt/swift/usr
PIP=(--quiet --disable-pip-version-check)
step() { echo "install: [$SECONDS s] $*"; }

# The folders the loader would find a system OpenBLAS in (Debian's alternatives), to be hidden.
BLAS_DIRS=()
for dir in /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/x86_64-linux-gnu/openblas-serial \
           /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/x86_64-linux-gnu/blas; do
    [[ -d "$dir" ]] && BLAS_DIRS+=("$dir")
done
CAN_HIDE=0
unshare -m true 2>/dev/null && CAN_HIDE=1
hidden() {  # runs "$@" with the toolchain and the system's OpenBLAS hidden, where possible
    if ((CAN_HIDE)); then
        local mounts="mount -t tmpfs none '$TOOLCHAIN'"
        for dir in "${BLAS_DIRS[@]}"; do mounts+=" && mount -t tmpfs none '$dir'"; done
        unshare -m sh -c "$mounts"' && exec "$@"' hidden "$@"
    else
        "$@"
    fi
}

cat > "$WORK/quick.py" <<'PY'
import ctypes, sys
import numpy as np
import amm_softmax
rng = np.random.default_rng(0)
cos = rng.uniform(-1, 1, (32, 1000)).astype(np.float32)
labels = rng.integers(0, 1000, 32)
loss, grad = amm_softmax.forward_backward(cos, labels)
ref_loss, ref_grad = amm_softmax.reference.forward_backward(cos, labels)
assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (loss, ref_loss)
assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()
x, w = rng.standard_normal((8, 16)), rng.standard_normal((100, 16))
head_loss, gx, gw = amm_softmax.head_forward_backward(x, w, labels[:8] % 100)
ref_head = amm_softmax.reference.head_forward_backward(x, w, labels[:8] % 100)
assert abs(head_loss - ref_head[0]) <= 1e-9 * abs(ref_head[0]), (head_loss, ref_head[0])
assert np.allclose(gx, ref_head[1], rtol=1e-7, atol=1e-12) and np.allclose(gw, ref_head[2], rtol=1e-7, atol=1e-12)
path = amm_softmax._library.load()._name
assert "site-packages" in path, path
if sys.argv[1:] == ["hidden"]:  # the canary: the hidden libraries are really out of reach
    for name in ("libopenblas.so.0", "libswiftCore.so"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        raise SystemExit(f"{name} can still be loaded: it is not hidden")
print("quick start:", amm_softmax.__version__, amm_softmax.kernel_build(), f"{loss:.6f}", path)
PY

run_quick() {  # $1: the environment's python
    local py="$1"
    (cd "$WORK" && env -u LD_LIBRARY_PATH "$py" quick.py)
    if ((CAN_HIDE)); then
        (cd "$WORK" && hidden env -u LD_LIBRARY_PATH "$py" quick.py hidden)
        echo "install: quick start ran with $TOOLCHAIN and ${BLAS_DIRS[*]:-no system OpenBLAS} hidden"
    else
        echo "install: no private mount namespace here; nothing hidden (ldd checked below)"
    fi
    local lib
    lib="$("$py" -c 'import amm_softmax, os; print(os.path.dirname(amm_softmax.__file__))')/lib"
    for so in "$lib"/*.so; do
        if ldd "$so" | grep -q -e "$TOOLCHAIN" -e libopenblas; then
            echo "install: $so points into the toolchain or at an OpenBLAS:"; ldd "$so"; exit 1
        fi
    done
    echo "install: ldd: no library points into $TOOLCHAIN or at an OpenBLAS"
}

# --- The sdist -------------------------------------------------------------------------------
step "sdist"
(cd "$WORK/src" && python3 -m build --sdist --no-isolation --outdir "$WORK/dist" >/dev/null 2>&1)
SDIST="$(echo "$WORK"/dist/amm[-_]softmax-*.tar.gz)"
echo "install: sdist $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KiB)"
python3 -m venv "$WORK/venv0"
if env PATH="$WORK/venv0/bin:/usr/bin:/bin" "$WORK/venv0/bin/pip" install "${PIP[@]}" "$SDIST" \
        >"$WORK/no-swift.log" 2>&1; then
    echo "install: the sdist installed without Swift on PATH"; exit 1
fi
grep -q "building from source needs the Swift toolchain" "$WORK/no-swift.log" || {
    echo "install: the sdist failed without Swift, but not with the message:"; cat "$WORK/no-swift.log"; exit 1; }
echo "install: without Swift, pip install of the sdist fails saying what to install"

mkdir -p "$WORK/sdist" && tar xzf "$SDIST" -C "$WORK/sdist"
SRC="$(echo "$WORK"/sdist/amm[-_]softmax-*/)"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install "${PIP[@]}" "$SRC"
step "installed from the sdist"
run_quick "$WORK/venv/bin/python"
(cd "$WORK" && "$WORK/venv/bin/amm-softmax" train --help | grep -q -- "--quick")
echo "install: the amm-softmax command answers"

# --- The wheel -------------------------------------------------------------------------------
(cd "$SRC" && "$WORK/venv/bin/pip" wheel "${PIP[@]}" --no-deps -w "$WORK/wheels" .)
WHEEL="$(echo "$WORK"/wheels/amm_softmax-*.whl)"
python3 -m auditwheel show "$WHEEL" | tee "$WORK/show.txt"
grep -q "manylinux_2_[0-9]*_x86_64" "$WORK/show.txt" || { echo "install: no manylinux tag"; exit 1; }
python3 -m auditwheel repair --wheel-dir "$WORK/wheelhouse" "$WHEEL"
REPAIRED="$(echo "$WORK"/wheelhouse/amm_softmax-*-py3-none-manylinux*_x86_64.whl)"
[[ -f "$REPAIRED" ]] || { echo "install: auditwheel repair made no manylinux wheel"; exit 1; }
echo "install: wheel $(basename "$REPAIRED") ($(du -k "$REPAIRED" | cut -f1) KiB)"
python3 -m zipfile -l "$REPAIRED" | grep -E "\.so|py.typed"

python3 -m venv "$WORK/venv2"
"$WORK/venv2/bin/pip" install "${PIP[@]}" "$REPAIRED" threadpoolctl
step "installed the manylinux wheel"
run_quick "$WORK/venv2/bin/python"
(cd "$WORK" && hidden env -u LD_LIBRARY_PATH "$WORK/venv2/bin/python" "$ROOT/Tests/install/numpy_together.py")
(cd "$WORK" && hidden env -u LD_LIBRARY_PATH "$WORK/venv2/bin/python" -m amm_softmax info) | tee "$WORK/info.txt"
grep -q "^amm-softmax .* (library .*)$" "$WORK/info.txt" && grep -q "^BLAS: OpenBLAS [0-9]" "$WORK/info.txt" \
    && grep -q "^Swift runtime: linked statically" "$WORK/info.txt" \
    && grep -q "site-packages/amm_softmax/lib/libAMMSoftmax.so$" "$WORK/info.txt" \
    || { echo "install: python -m amm_softmax info misses a fact"; exit 1; }
# mypy of this environment's python finds the installed package only through its py.typed.
(cd "$ROOT/python/tests/typing_user" && python3 -m mypy --strict --no-incremental \
    --ignore-missing-imports --python-executable "$WORK/venv2/bin/python" user_script.py)
echo "install: mypy --strict passes a user's script against the installed wheel"

# --- C and C++ against an installed prefix ---------------------------------------------------
step "C and C++"
(cd "$SRC" && bash scripts/install.sh "$WORK/prefix")
for f in lib/libAMMSoftmax.so lib/libAMMSoftmaxAVX2.so lib/libAMMSoftmaxAVX512.so \
         include/amm_softmax.h lib/pkgconfig/amm-softmax.pc \
         lib/cmake/AMMSoftmax/AMMSoftmaxConfig.cmake lib/cmake/AMMSoftmax/AMMSoftmaxConfigVersion.cmake; do
    [[ -f "$WORK/prefix/$f" ]] || { echo "install: $f is not in the prefix"; exit 1; }
done
cmake -S "$ROOT/Tests/install" -B "$WORK/cmake-build" -DCMAKE_PREFIX_PATH="$WORK/prefix" \
      -DAMM_EXAMPLE_C="$ROOT/examples/c/example.c" >/dev/null
cmake --build "$WORK/cmake-build" >/dev/null
hidden "$WORK/cmake-build/amm_example_c" >/dev/null
hidden "$WORK/cmake-build/amm_consumer_cpp"
echo "install: CMake find_package(AMMSoftmax 0.3): the C example and the C++ program run"
# The version file: 0.2 and 1.0 are refused (before 1.0 the minor version must match).
for wrong in 0.2 1.0 0.99; do
    mkdir -p "$WORK/cmake-wrong-$wrong"
    printf 'cmake_minimum_required(VERSION 3.16)\nproject(w NONE)\nfind_package(AMMSoftmax %s REQUIRED)\n' \
        "$wrong" > "$WORK/cmake-wrong-$wrong/CMakeLists.txt"
    if cmake -S "$WORK/cmake-wrong-$wrong" -B "$WORK/cmake-wrong-$wrong/build" \
             -DCMAKE_PREFIX_PATH="$WORK/prefix" >/dev/null 2>&1; then
        echo "install: find_package(AMMSoftmax $wrong) accepted version $(python3 -c 'import sys; sys.path.insert(0, "'"$ROOT"'/python"); import amm_softmax; print(amm_softmax.__version__)')"
        exit 1
    fi
done
echo "install: find_package refuses 0.2, 0.99 and 1.0"
export PKG_CONFIG_PATH="$WORK/prefix/lib/pkgconfig"
[[ "$(pkg-config --modversion amm-softmax)" == "$(sed -n 's/^Version: //p' "$PKG_CONFIG_PATH/amm-softmax.pc")" ]]
# shellcheck disable=SC2046  # pkg-config's flags are words
gcc -std=c11 -Wall -Wextra -Werror -pedantic "$ROOT/examples/c/example.c" \
    $(pkg-config --cflags --libs amm-softmax) -lm -o "$WORK/example_pc"
# shellcheck disable=SC2046
g++ -std=c++17 -Wall -Wextra -Werror -pedantic "$ROOT/Tests/install/consumer.cpp" \
    $(pkg-config --cflags --libs amm-softmax) -o "$WORK/consumer_pc"
hidden env LD_LIBRARY_PATH="$WORK/prefix/lib" "$WORK/example_pc" >/dev/null
hidden env LD_LIBRARY_PATH="$WORK/prefix/lib" "$WORK/consumer_pc"
echo "install: pkg-config amm-softmax: the C example and the C++ program run"

# --- Swift: a package of its own that depends on this one ------------------------------------
step "Swift"
cp -R "$ROOT/Tests/SwiftConsumer" "$WORK/consumer"
rm -rf "$WORK/consumer/.build"
(cd "$WORK/consumer" && AMM_SOFTMAX_ROOT="$WORK/src" swift run --quiet SwiftConsumer) | tee "$WORK/swift.txt"
grep -q "^swift consumer: ok$" "$WORK/swift.txt"
step "ok"
echo "install: ok"
