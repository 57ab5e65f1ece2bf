"""Build of the compiled kernels: Cython + the C headers in include/, with an OpenMP probe.

Environment switches:
  FASTLSTM_NO_OPENMP=1    build serially even where OpenMP works
  FASTLSTM_CYTHON_DEBUG=1 bounds checks on, for debugging the kernels
  FASTLSTM_SANITIZE=1     build with AddressSanitizer (see README, "Checking memory safety")
"""

import os
import sys
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HEADERS = [os.path.join("include", f) for f in sorted(os.listdir("include")) if f.endswith(".h")]


def _flag_works(compiler, flags):
    """Whether a tiny OpenMP program compiles and links with ``flags``."""
    src = textwrap.dedent("""
        #include <omp.h>
        int main(void) { int n = 0;
        #pragma omp parallel reduction(+:n)
          n += 1;
          return omp_get_max_threads() > 0 && n > 0 ? 0 : 1; }
    """)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """Adds OpenMP where the compiler supports it, and says so where it does not."""

    def build_extensions(self):
        flags = ["/openmp"] if self.compiler.compiler_type == "msvc" else ["-fopenmp"]
        if os.environ.get("FASTLSTM_NO_OPENMP") == "1":
            use_omp = False
            warnings.warn("fastlstm: FASTLSTM_NO_OPENMP=1, building the kernels without OpenMP")
        else:
            use_omp = _flag_works(self.compiler, flags)
            if not use_omp:
                warnings.warn("fastlstm: the compiler does not support OpenMP; building serial kernels "
                              "(batches run on one thread; fastlstm.openmp_enabled() returns False)")
        for ext in self.extensions:
            if use_omp:
                ext.extra_compile_args += flags
                ext.extra_link_args += flags
        super().build_extensions()


def _extension(name):
    # -fno-trapping-math: the activations' selects may then compute both sides, which
    # lets GCC vectorise the cell loop without AVX-512's masked instructions (kernels
    # never unmask FP exceptions; no result changes).
    compile_args = [] if sys.platform == "win32" else ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-trapping-math",
                                                       "-Wno-unused-function"]
    link_args = []
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
