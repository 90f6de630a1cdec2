"""Builds the Swift library into the Python package (the rest of the metadata: pyproject.toml).

The version has one source, the AMM_VERSION_* macros of include/amm_softmax.h: the Swift library
reports them (amm_version()), this file gives them to the package metadata, and the build writes
them into amm_softmax/_version.py for `amm_softmax.__version__`.

`build_py` runs `swift build -c release -Xswiftc -static-stdlib` (into .build-wheel/) and copies
libAMMSoftmax.so and its optional AVX2/AVX-512 companions into amm_softmax/lib/. With the Swift
runtime linked statically and a RUNPATH of $ORIGIN only, the installed package (and a wheel made
by `pip wheel .`) needs no Swift toolchain and no OpenBLAS (the library links its own, serial,
statically); it still needs the C and C++ runtimes on the machine.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIBRARIES = ("libAMMSoftmax.so", "libAMMSoftmaxAVX2.so", "libAMMSoftmaxAVX512.so")

#: What a machine needs to build from source, said when the build cannot start.
NEEDS = """amm-softmax: building from source needs the Swift toolchain (swift 6.x), which is not on PATH.
Install it (https://www.swift.org/install/linux/, then put its usr/bin on PATH), together with
a C compiler and Debian's serial OpenBLAS (apt-get install gcc libopenblas-serial-dev), and
run pip again; or install the prebuilt wheel (manylinux, x86-64), which needs none of these."""


def version() -> str:
    header = (ROOT / "include" / "amm_softmax.h").read_text()
    parts = [re.search(rf"#define AMM_VERSION_{p} (\d+)", header).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def blas() -> str:
    """The BLAS the build links, as `python -m amm_softmax info` reports it (amm_softmax/_info.py,
    loaded by path: the package itself needs NumPy)."""
    spec = importlib.util.spec_from_file_location("amm_softmax_info",
                                                  ROOT / "python" / "amm_softmax" / "_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.blas_from_package(ROOT / "Package.swift")


class BuildWithSwift(build_py):
    def run(self):
        if shutil.which("swift") is None:
            print(NEEDS, file=sys.stderr)
            raise SystemExit(NEEDS)
        super().run()
        scratch = ROOT / ".build-wheel"
        subprocess.check_call(["swift", "build", "-c", "release", "--scratch-path", str(scratch),
                               "-Xswiftc", "-static-stdlib"], cwd=ROOT)
        target = Path(self.build_lib) / "amm_softmax" / "lib"
        target.mkdir(parents=True, exist_ok=True)
        for name in LIBRARIES:
            shutil.copy2(scratch / "release" / name, target / name)
        (Path(self.build_lib) / "amm_softmax" / "_version.py").write_text(
            f'__version__ = "{version()}"  # written by setup.py from include/amm_softmax.h\n')
        (Path(self.build_lib) / "amm_softmax" / "_build_info.py").write_text(
            f"BLAS = {blas()!r}  # written by setup.py from Package.swift\n")


try:  # setuptools >= 70.1 has bdist_wheel; older ones use the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel


class AnyPythonWheel(bdist_wheel):
    """The package loads its library with ctypes and has no extension module: one wheel serves
    every CPython 3 on the platform (tag py3-none-PLATFORM)."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


class BinaryDistribution(Distribution):
    """The package holds compiled code: a platform wheel, not a pure-Python one."""

    def has_ext_modules(self):
        return True


setup(version=version(), cmdclass={"build_py": BuildWithSwift, "bdist_wheel": AnyPythonWheel}, distclass=BinaryDistribution)
