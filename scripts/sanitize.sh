#!/usr/bin/env bash
# The library and its tests under the sanitizers (docs/SANITIZERS.md says what each step covers,
# why it is built the way it is, and how long it takes):
#
#   asan-build    swift build with AddressSanitizer, and UndefinedBehaviorSanitizer for the C
#                 code (.build-asan); checks that every C compile and every Swift module got the
#                 flags, and that the libraries carry the checks
#   asan-swift    swift test (every Swift test) on that build
#   asan-c-abi    Tests/c/abi_test.c, compiled as python/tests/test_c_programs.py compiles it
#                 (but by the toolchain's clang) plus -fsanitize=address,undefined, against the
#                 ASan libAMMSoftmax.so
#   asan-python   a Python smoke run (README's quick start, the head, a sharded call through
#                 amm_softmax._shard with SingleProcess) on the ASan library, once per kernel
#                 build the CPU runs, after a canary proving that a one-element overread in the
#                 library is reported
#   tsan-build    swift build with ThreadSanitizer (.build-tsan), with the same checks
#   tsan-swift    swift test (every Swift test: most run on 2 or more threads) on that build
#   tsan-c-abi    Tests/c/abi_test.c with -fsanitize=thread (concurrent calls, every num_threads)
#
# A step fails on a non-zero exit or on any sanitizer report in its output (the full output is
# in .build-sanitize/<step>.log). Every step runs even when an earlier one failed (except those
# that need a build that failed); the script exits 1 if any step failed. No suppressions.
# Safe to run again: the builds are incremental, .build-sanitize/ is recreated each run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="$ROOT/.build-sanitize"
rm -rf "$OUT"
mkdir -p "$OUT"

TOOLCHAIN_BIN="$(dirname "$(command -v swift)")"   # e.g. /opt/swift/usr/bin
CLANG="$TOOLCHAIN_BIN/clang"                        # the clang of the Swift toolchain: its
                                                    # sanitizer runtimes are the ones swiftc links
SWIFT_RUNTIME_DIR="$(dirname "$TOOLCHAIN_BIN")/lib/swift/linux"
ASAN_RUNTIME="$("$CLANG" -print-file-name=libclang_rt.asan-x86_64.so)"
PYTHON="$(python3 -c 'import sys; print(sys.executable)')"  # the interpreter itself, not a shim,
                                                             # so that LD_PRELOAD reaches it only
# What counts as a report, in any step's output.
REPORTS='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer|SUMMARY: [A-Za-z]*Sanitizer'
# ASan stops at the first error (its default); LSan runs at exit (the default on x86-64 Linux,
# said here so that no one has to know it); UBSan prints a stack and stops too, so that a report
# is an exit status as well as text.
ASAN_ENV=(ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)
# TSan reports every race and exits 66 at the end if there was one.
TSAN_ENV=(TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1)
# The flags test_c_programs.py compiles Tests/c/abi_test.c with (WARNINGS, -std=c11, -I include,
# LINK and -lpthread); the library folder is added per build.
C_FLAGS=(-std=c11 -Wall -Wextra -Werror -pedantic "-I$ROOT/include")

STEPS=()
FAILED=0
SKIPPED_AFTER=""

# run_step NAME FUNCTION: runs FUNCTION with its output in .build-sanitize/NAME.log, then prints
# one line: ok or FAILED, the time, and the step's own summary (DETAIL); on a failure, the first
# report or the end of the log.
run_step() {
    local name="$1" fn="$2" start=$SECONDS rc reports verdict
    LOG="$OUT/$name.log"
    DETAIL=""
    : > "$LOG"
    "$fn" >> "$LOG" 2>&1
    rc=$?
    reports=$(grep -cE "$REPORTS" "$LOG")
    if ((rc == 0 && reports == 0)); then
        verdict="ok"
    else
        verdict="FAILED (exit $rc, $reports sanitizer report lines)"
        FAILED=1
    fi
    local seconds=$((SECONDS - start))
    printf 'sanitize: %-12s %-6s %4d s  %s\n' "$name" "${verdict%% *}" "$seconds" "$DETAIL"
    STEPS+=("$(printf '%-12s %4d s  %s' "$name" "$seconds" "$verdict")")
    if [[ $verdict != ok ]]; then
        echo "---- $LOG (first report, or the last lines) ----"
        if ((reports > 0)); then
            grep -m1 -nE "$REPORTS" "$LOG" | cut -d: -f1 | {
                read -r line; sed -n "$((line > 2 ? line - 2 : 1)),$((line + 25))p" "$LOG"; }
        else
            grep -v 'Cannot export local symbol' "$LOG" | tail -25
        fi
        echo "----"
    fi
    return $((rc != 0 || reports != 0))
}

# check_instrumented SCRATCH C_FLAG SWIFT_FLAG SYMBOL...: every clang compile of a .c file in
# SwiftPM's build plan has C_FLAG, every swiftc module compile SWIFT_FLAG, and the three shared
# libraries import each SYMBOL prefix (the instrumentation's calls into the runtime).
check_instrumented() {
    local scratch="$1" cflag="$2" swiftflag="$3"
    shift 3
    "$PYTHON" - "$scratch/debug.yaml" "$cflag" "$swiftflag" <<'PY' || return 1
import json, sys
plan, cflag, swiftflag = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
c_compiles = swift_modules = 0
bad = []
for line in open(plan):
    line = line.strip()
    if not line.startswith("args: ["):
        continue
    args = json.loads(line[len("args: "):])
    tool = args[0].rsplit("/", 1)[-1]
    if tool == "clang" and "-c" in args and args[args.index("-c") + 1].endswith(".c"):
        c_compiles += 1
        source = args[args.index("-c") + 1]
        bad += [f"{source}: no {f}" for f in cflag if f not in args]
    elif tool == "swiftc" and "-module-name" in args and "-c" in args:
        swift_modules += 1
        module = args[args.index("-module-name") + 1]
        def has(flag):  # "-Xcc -fsanitize=undefined": consecutive arguments
            words = flag.split(" ")
            return any(args[k:k + len(words)] == words for k in range(len(args)))
        bad += [f"module {module}: no {f}" for f in swiftflag if not has(f)]
print(f"build plan: {c_compiles} C compiles with {' '.join(cflag)}, "
      f"{swift_modules} Swift modules with {' '.join(swiftflag)}")
if bad or c_compiles == 0 or swift_modules == 0:
    print("missing sanitizer flags:", *bad, sep="\n  ")
    sys.exit(1)
PY
    local lib symbol imports
    for lib in libAMMSoftmax.so libAMMSoftmaxAVX2.so libAMMSoftmaxAVX512.so; do
        imports="$(nm -D --undefined-only "$scratch/debug/$lib")" || return 1
        for symbol in "$@"; do
            if ! grep -q " $symbol" <<<"$imports"; then
                echo "$lib calls no $symbol* function: not instrumented"
                return 1
            fi
        done
        echo "$lib: calls into the runtime ($*)"
    done
}

# The suite has only swift-testing tests; swift test's XCTest pass would find none, and its
# runner leaks 368 bytes inside libXCTest.so at exit, which LeakSanitizer reports. So the XCTest
# pass is not run; should XCTest tests ever be added, say so here instead of skipping them.
xctest_guard() {
    if grep -rlq '^import XCTest' Tests; then
        echo "Tests/ has XCTest tests: scripts/sanitize.sh runs swift test with --disable-xctest"
        echo "(see its comment); run them too before relying on this script"
        return 1
    fi
}

# ------------------------------------------------------------------------------------------------
# AddressSanitizer + UndefinedBehaviorSanitizer

# swiftc has no -sanitize=undefined on Linux ("unsupported option '-sanitize=undefined' for
# target 'x86_64-unknown-linux-gnu'"), so `swift build --sanitize=undefined` fails at the first
# Swift module. UBSan goes to the C code instead through -Xcc: SwiftPM passes it to every clang
# compile (CPlatform, CVectorMath, the probes, swift-numerics' shims) and to every swiftc, whose
# clang compiles the C inline functions the Swift modules import (CVectorMath's header-only
# vector math, inlined into every kernel build). Swift code itself has its own run-time checks in
# this debug build (overflow, array bounds), and ASan instruments its memory accesses.
ASAN_BUILD_FLAGS=(--sanitize=address -Xcc -fsanitize=undefined --scratch-path .build-asan)

asan_build() {
    swift build "${ASAN_BUILD_FLAGS[@]}" || return
    check_instrumented .build-asan -fsanitize=address,-fsanitize=undefined \
        -sanitize=address,"-Xcc -fsanitize=undefined" __asan_ __ubsan_handle_ || return
    DETAIL="C: -fsanitize=address,undefined; Swift: -sanitize=address, C imports with UBSan"
}

asan_swift() {
    xctest_guard || return
    env "${ASAN_ENV[@]}" swift test "${ASAN_BUILD_FLAGS[@]}" --disable-xctest || return
    DETAIL="$(grep -oE 'Test run with [0-9]+ tests in [0-9]+ suites passed' "$LOG" | tail -1)"
}

asan_c_abi() {
    local lib="$ROOT/.build-asan/debug" bin="$OUT/abi_test_asan"
    "$CLANG" "${C_FLAGS[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -g \
        "$ROOT/Tests/c/abi_test.c" "-L$lib" -lAMMSoftmax "-Wl,-rpath,$lib" -lm -lpthread \
        -o "$bin" 2>&1 | grep -v 'Cannot export local symbol'
    [[ -x $bin ]] || { echo "compiling Tests/c/abi_test.c failed"; return 1; }
    env "${ASAN_ENV[@]}" "$bin" || return
    DETAIL="$(tail -1 "$LOG")"
    grep -qE '^[0-9]+ passed, 0 failed$' <<<"$DETAIL" || return 1
}

# The Python smoke run: README's quick start, an error from the library, the head (f32 and f64,
# 1 and 2 threads, into given arrays, with class sampling) against the reference, and the
# sharded protocol on one process (amm_softmax._shard with SingleProcess: the head sharded into
# one shard gives the head's bits; the loss on cosine logits agrees within rounding).
write_python_smoke() {
    cat > "$OUT/smoke.py" <<'PY'
import numpy as np
import amm_softmax
from amm_softmax import _shard

# The quick start of README.md ("Python").
cos = np.random.default_rng(0).uniform(-1, 1, (32, 1000)).astype(np.float32)
labels = np.random.default_rng(1).integers(0, 1000, 32)

loss = amm_softmax.forward(cos, labels)                          # float (mean)
grad = amm_softmax.backward(cos, labels, grad_output=1.0)         # (32, 1000) float32
loss, grad = amm_softmax.forward_backward(cos, labels, target="arc", hard="none")  # ArcFace
loss, grad = amm_softmax.forward_backward(cos, labels, out=grad)  # reuse the gradient array
per_row = amm_softmax.forward(cos, labels, reduction="none")     # (32,) float32
ref_loss, ref_grad = amm_softmax.reference.forward_backward(cos, labels)  # plain NumPy
assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (loss, ref_loss)
assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()
assert per_row.shape == (32,) and np.isfinite(per_row).all()

# An error found by the library (a NaN met during its read of cos), with its message.
bad = cos.copy()
bad[3, 7] = np.nan
try:
    amm_softmax.forward(bad, labels, num_threads=2)
    raise AssertionError("a NaN cosine was accepted")
except ValueError as e:
    assert "cos[3, 7] = nan" in str(e), e

# The fused head (README's call, smaller: this is a debug build), f32 and f64, 1 and 2 threads,
# blocks of 512 classes, against the reference; into given arrays; with class sampling.
rng = np.random.default_rng(2)
x64, w64 = rng.standard_normal((64, 96)), rng.standard_normal((3000, 96))
y = rng.integers(0, 3000, 64)
y[5] = -100
for dtype in (np.float32, np.float64):
    x, w = x64.astype(dtype), w64.astype(dtype)
    ref = amm_softmax.reference.head_forward_backward(x, w, y)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for threads in (1, 2):
        got = amm_softmax.head_forward_backward(x, w, y, num_threads=threads, block_size=512)
        assert abs(got[0] - ref[0]) <= tol * abs(ref[0]), (dtype, threads, got[0], ref[0])
        for g, r in zip(got[1:], ref[1:]):
            assert np.abs(g - r).max() <= tol * np.abs(r).max(), (dtype, threads)
    head = amm_softmax.head_forward_backward(x, w, y, out=(np.empty_like(x), np.empty_like(w)))
    sampled = amm_softmax.head_forward_backward(x, w, y, sample_rate=0.25, seed=1, step=3,
                                                return_sampled=True)
    assert np.isfinite(sampled[0]) and len(sampled[3]) >= 0.25 * 3000 - 1

    # Sharded by class through the protocol on one process (SingleProcess): one shard gives the
    # head's bits; the same with class sampling; and the loss on cosine logits, within rounding
    # of the unsharded loss (README, "Accuracy": the sums run in another order).
    sh = _shard.head_forward_backward(x, w, y, _shard.SingleProcess(), num_threads=2)
    assert sh[0] == head[0] and np.array_equal(sh[1], head[1]) and np.array_equal(sh[2], head[2])
    sh = _shard.head_forward_backward(x, w, y, _shard.SingleProcess(), sample_rate=0.5, seed=2,
                                      return_sampled=True)
    assert np.isfinite(sh[0]) and np.isfinite(sh[1]).all() and np.isfinite(sh[2]).all()
    c = cos.astype(dtype)
    sl, sg = _shard.cosine_forward_backward(c, labels, _shard.SingleProcess(), num_threads=2)
    ul, ug = amm_softmax.forward_backward(c, labels, num_threads=2)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert abs(sl - ul) <= rtol * abs(ul) and np.abs(sg - ug).max() <= rtol * np.abs(ug).max()

print("python smoke: ok; kernels", amm_softmax.kernel_build(), "from",
      amm_softmax._library.load()._name)
PY
    # The canary: amm_forward_f32 told that a 14-element array is 3 x 5. The library reads one
    # element past its end; the step fails unless ASan reports that.
    cat > "$OUT/canary.py" <<'PY'
import ctypes
import numpy as np
from amm_softmax import _library as L

lib = L.load()
p = L.AmmParams()
lib.amm_params_init(ctypes.byref(p))
p.reduction = L.REDUCTION_CODES["none"]
cos = np.zeros(3 * 5 - 1, dtype=np.float32)
labels, loss = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.float32)
lib.amm_forward_f32(ctypes.byref(p), cos.ctypes.data_as(ctypes.c_void_p), 3, 5,
                    labels.ctypes.data_as(ctypes.c_void_p), loss.ctypes.data_as(ctypes.c_void_p))
print("canary: the overread was NOT reported")
PY
}

asan_python() {
    [[ -f $ASAN_RUNTIME ]] || { echo "no ASan runtime at $ASAN_RUNTIME"; return 1; }
    write_python_smoke
    # The library is instrumented but python3 is not: the ASan runtime must be in the process
    # before anything else (LD_PRELOAD of the toolchain clang's libclang_rt.asan, the runtime
    # the library was compiled against). detect_leaks=0: CPython does not free everything it
    # allocates before exit (interned objects, module state, NumPy's caches), so LeakSanitizer
    # would report the interpreter's own allocations; the library's leaks are checked by the
    # Swift and C steps, which run with detect_leaks=1.
    local py_env=(LD_PRELOAD="$ASAN_RUNTIME" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1
                  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
                  AMM_SOFTMAX_LIBRARY="$ROOT/.build-asan/debug/libAMMSoftmax.so"
                  PYTHONPATH="$ROOT/python")
    # The canary, in a log of its own (its report is expected, so kept out of this step's log).
    env "${py_env[@]}" "$PYTHON" "$OUT/canary.py" > "$OUT/asan-python-canary.log" 2>&1
    if ! grep -q 'ERROR: AddressSanitizer: heap-buffer-overflow' "$OUT/asan-python-canary.log"
    then
        echo "the canary's overread was not reported: is the library the ASan build, and the"
        echo "runtime preloaded? $OUT/asan-python-canary.log:"
        tail -5 "$OUT/asan-python-canary.log"
        return 1
    fi
    echo "canary: a one-element overread in the library is reported (asan-python-canary.log)"
    # Once with the best kernel build the CPU runs, then with each lower one (AMM_SOFTMAX_KERNELS
    # caps the choice): avx512, avx2, portable, as far down from the best as there are.
    local request ran=() lower=()
    env "${py_env[@]}" "$PYTHON" "$OUT/smoke.py" || return
    ran+=("$(tail -1 "$LOG" | sed -E 's/.*kernels ([a-z0-9]+) .*/\1/')")
    case "${ran[0]}" in
        avx512) lower=(avx2 portable) ;;
        avx2) lower=(portable) ;;
    esac
    for request in "${lower[@]}"; do
        env "${py_env[@]}" AMM_SOFTMAX_KERNELS="$request" "$PYTHON" "$OUT/smoke.py" || return
        ran+=("$(tail -1 "$LOG" | sed -E 's/.*kernels ([a-z0-9]+) .*/\1/')")
    done
    DETAIL="canary caught; smoke ok with kernels: ${ran[*]}"
}

# ------------------------------------------------------------------------------------------------
# ThreadSanitizer

TSAN_BUILD_FLAGS=(--sanitize=thread --scratch-path .build-tsan)

tsan_build() {
    swift build "${TSAN_BUILD_FLAGS[@]}" || return
    check_instrumented .build-tsan -fsanitize=thread -sanitize=thread __tsan_ || return
    DETAIL="C: -fsanitize=thread; Swift: -sanitize=thread"
}

# Every Swift test, not a selection: on two cores the default num_threads (0, one per core)
# already runs the row kernels, the head's blocks and the shard phases on 2 workers, several
# tests ask for 1 to 5 threads (KernelReferenceTests, StreamingTests, ValidationTests,
# ShardTests), swift-testing runs the suites in parallel, and the whole suite takes under two
# minutes here.
tsan_swift() {
    xctest_guard || return
    env "${TSAN_ENV[@]}" swift test "${TSAN_BUILD_FLAGS[@]}" --disable-xctest || return
    DETAIL="$(grep -oE 'Test run with [0-9]+ tests in [0-9]+ suites passed' "$LOG" | tail -1)"
}

# The ABI test has the concurrency checks the Swift tests lack: 4 threads calling the library at
# once (each with num_threads 2), a failing call on another thread, every num_threads for the
# loss, the head and the shard phases. The toolchain's TSan runtime has libdispatch interceptors,
# so a C program linked with it needs libdispatch and the blocks runtime (from the toolchain).
tsan_c_abi() {
    local lib="$ROOT/.build-tsan/debug" bin="$OUT/abi_test_tsan"
    "$CLANG" "${C_FLAGS[@]}" -fsanitize=thread -g "$ROOT/Tests/c/abi_test.c" \
        "-L$lib" -lAMMSoftmax "-Wl,-rpath,$lib" "-L$SWIFT_RUNTIME_DIR" -ldispatch \
        -lBlocksRuntime "-Wl,-rpath,$SWIFT_RUNTIME_DIR" -lm -lpthread -o "$bin" 2>&1 |
        grep -v 'Cannot export local symbol'
    [[ -x $bin ]] || { echo "compiling Tests/c/abi_test.c failed"; return 1; }
    env "${TSAN_ENV[@]}" "$bin" || return
    DETAIL="$(tail -1 "$LOG")"
    grep -qE '^[0-9]+ passed, 0 failed$' <<<"$DETAIL" || return 1
}

# ------------------------------------------------------------------------------------------------

echo "sanitize: $(swift --version 2>/dev/null | head -1); clang $("$CLANG" -dumpversion);" \
     "$(nproc) cores; logs in .build-sanitize/"
START=$SECONDS
if run_step asan-build asan_build; then
    run_step asan-swift asan_swift
    run_step asan-c-abi asan_c_abi
    run_step asan-python asan_python
else
    SKIPPED_AFTER+=" asan-swift asan-c-abi asan-python"
fi
if run_step tsan-build tsan_build; then
    run_step tsan-swift tsan_swift
    run_step tsan-c-abi tsan_c_abi
else
    SKIPPED_AFTER+=" tsan-swift tsan-c-abi"
fi

echo "sanitize: summary ($((SECONDS - START)) s)"
printf '  %s\n' "${STEPS[@]}"
[[ -n $SKIPPED_AFTER ]] && echo "  not run (their build failed):$SKIPPED_AFTER"
if ((FAILED)); then
    echo "sanitize: FAILED (the logs are in .build-sanitize/)"
    exit 1
fi
echo "sanitize: ok, no sanitizer reports"
