#!/usr/bin/env bash
# Installs the package as a new user would and uses it from elsewhere, without the Swift
# toolchain: a fresh virtual environment, `pip install .` from a clean copy of this checkout,
# then `pip wheel .` installed into a second environment; each runs the quick start from another
# folder with LD_LIBRARY_PATH unset and, where the machine allows a private mount namespace,
# the toolchain's folder (/opt/swift) hidden from the loader. Also checks with ldd that no
# installed library points into the toolchain. Prints "install: ok" last.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar cf -) | (mkdir -p "$WORK/src" && tar xf - -C "$WORK/src")
TOOLCHAIN="$(dirname "$(dirname "$(command -v swift)")")"   # e.g. /opt/swift/usr

cat > "$WORK/quick.py" <<'PY'
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
assert np.isfinite(head_loss) and np.isfinite(gx).all() and np.isfinite(gw).all()
path = amm_softmax._library.load()._name
assert "site-packages" in path, path
print("quick start:", amm_softmax.__version__, amm_softmax.kernel_build(), f"{loss:.6f}", path)
PY

run_quick() {  # $1: the environment's python
    local py="$1"
    (cd "$WORK" && env -u LD_LIBRARY_PATH "$py" quick.py)
    if unshare -m true 2>/dev/null; then
        (cd "$WORK" && unshare -m sh -c "mount -t tmpfs none '$TOOLCHAIN' && env -u LD_LIBRARY_PATH '$py' quick.py")
        echo "install: quick start ran with $TOOLCHAIN hidden"
    else
        echo "install: no private mount namespace here; toolchain not hidden (ldd checked below)"
    fi
    local lib
    lib="$("$py" -c 'import amm_softmax, os; print(os.path.dirname(amm_softmax.__file__))')/lib"
    for so in "$lib"/*.so; do
        if ldd "$so" | grep -q "$TOOLCHAIN"; then
            echo "install: $so points into the toolchain:"; ldd "$so"; exit 1
        fi
    done
    echo "install: ldd: no library points into $TOOLCHAIN"
}

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "$WORK/src"
run_quick "$WORK/venv/bin/python"
(cd "$WORK" && "$WORK/venv/bin/amm-softmax" train --help | grep -q -- "--quick")
echo "install: the amm-softmax command answers"

(cd "$WORK/src" && "$WORK/venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/wheels" .)
python3 -m venv "$WORK/venv2"
"$WORK/venv2/bin/pip" install --quiet --disable-pip-version-check "$WORK"/wheels/amm_softmax-*.whl
echo "install: wheel $(basename "$WORK"/wheels/amm_softmax-*.whl)"
run_quick "$WORK/venv2/bin/python"
echo "install: ok"
