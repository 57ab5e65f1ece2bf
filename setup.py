"""Build of the compiled kernels: Cython + the C headers in include/.

The kernels' threads are fastlstm's own (include/fastlstm_pool.h, POSIX
threads), so no OpenMP runtime is linked.

Environment switches:
  FASTLSTM_CYTHON_DEBUG=1 bounds checks on, for debugging the kernels
  FASTLSTM_SANITIZE=1     build with AddressSanitizer (docs/security.md, "Memory safety of the kernels")
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HEADERS = [os.path.join("include", f) for f in sorted(os.listdir("include")) if f.endswith(".h")]


class BuildExt(build_ext):
    """Refuses MSVC up front, with the reason, instead of failing deep inside a header."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            raise RuntimeError(
                "fastlstm builds with GCC or Clang only: its C headers use GCC builtins "
                "(__atomic_*, target attributes, vector extensions) and POSIX threads, which MSVC lacks"
            )
        super().build_extensions()


def _extension(name):
    # -fno-trapping-math: the activations' selects may then compute both sides, which
    # lets GCC vectorise the cell loop without AVX-512's masked instructions (kernels
    # never unmask FP exceptions; no result changes).
    compile_args = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-trapping-math", "-Wno-unused-function", "-pthread"]
    link_args = ["-pthread"]
    if os.environ.get("FASTLSTM_SANITIZE") == "1":
        compile_args += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        link_args += ["-fsanitize=address"]
    return Extension(
        f"fastlstm.{name}",
        [f"fastlstm/{name}.pyx"],
        include_dirs=["include", numpy.get_include()],
        depends=HEADERS + ["fastlstm/_kernels.pxd"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


debug = os.environ.get("FASTLSTM_CYTHON_DEBUG") == "1"
setup(
    ext_modules=cythonize(
        [_extension("_kernels"), _extension("_streams")],
        compiler_directives={"boundscheck": debug, "wraparound": debug, "initializedcheck": debug},
    ),
    cmdclass={"build_ext": BuildExt},
)
