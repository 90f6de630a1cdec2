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
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIBRARIES = ("libAMMSoftmax.so", "libAMMSoftmaxAVX2.so", "libAMMSoftmaxAVX512.so")


def version() -> str:
    header = (ROOT / "include" / "amm_softmax.h").read_text()
    parts = [re.search(rf"#define AMM_VERSION_{p} (\d+)", header).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


class BuildWithSwift(build_py):
    def run(self):
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


class BinaryDistribution(Distribution):
    """The package holds compiled code: a platform wheel, not a pure-Python one."""

    def has_ext_modules(self):
        return True


setup(version=version(), cmdclass={"build_py": BuildWithSwift}, distclass=BinaryDistribution)
