"""Build the Cython extension modules of numamem.

Every ``src/numamem/**/*.pyx`` becomes an extension module of the same dotted name, compiled
against the project's own headers (``include/``), NumPy's headers and libnuma. Adding a module
means adding a ``.pyx`` file; nothing here needs to change.
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"


def extensions():
    modules = []
    for pyx in sorted(SRC.glob("numamem/**/*.pyx")):
        rel = pyx.relative_to(SRC).with_suffix("")
        modules.append(
            Extension(
                ".".join(rel.parts),
                [str(pyx.relative_to(ROOT))],
                include_dirs=[str(ROOT / "include"), numpy.get_include()],
                libraries=["numa"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("_GNU_SOURCE", "1")],
                extra_compile_args=["-O2"],
            )
        )
    return cythonize(
        modules,
        language_level=3,
        include_path=[str(SRC)],
        compiler_directives={"embedsignature": True, "binding": True},
    )


setup(ext_modules=extensions())
