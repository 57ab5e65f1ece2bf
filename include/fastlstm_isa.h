/* Which instruction set the kernels use: chosen once, when the module loads.
 *
 * Three paths, each a complete set of the hot kernels (packed GEMM, gemv,
 * fused cell pass):
 *   FL_ISA_AVX512   x86-64 with AVX-512 (F, VL, BW, DQ): 16-float vectors
 *   FL_ISA_AVX2     x86-64 with AVX2 and FMA: 8-float vectors, 16 registers
 *   FL_ISA_GENERIC  portable C the compiler vectorises: SSE2 on any x86-64,
 *                   NEON (with fused multiply-add) on aarch64
 * The best path the CPU has is used, unless the environment variable
 * FASTLSTM_ISA=avx512|avx2|generic asks for another; a request above what the
 * CPU has is clamped here (never an illegal instruction) and refused with a
 * clear error by the Python layer (fastlstm/_isa.py).
 *
 * Every translation unit that includes this header gets its own copy of
 * fl_isa, set by a load-time constructor from the same CPU and environment,
 * so all compiled modules agree without any set-up call.  Kernels dispatch
 * with FL_ISA_DISPATCH on it: one predictable branch per call.
 */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

#include <stdlib.h>
#include <string.h>

enum fl_isa_level { FL_ISA_GENERIC = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX512 = 2 };

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_X86 1
#include <immintrin.h>
/* Feature lists rather than "arch=" names, so clang accepts them too. */
#define FL_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FL_TARGET_AVX2   __attribute__((target("avx2,fma")))
#else
#define FL_X86 0
#endif

/* The best path this CPU (and compiler) can run. */
static int fl_isa_cpu(void)
{
#if FL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
        return FL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FL_ISA_AVX2;
#endif
    return FL_ISA_GENERIC;
}

/* FASTLSTM_ISA as a level, or -1 when unset, empty or not a path name. */
static int fl_isa_requested(void)
{
    const char *s = getenv("FASTLSTM_ISA");
    if (s == NULL) return -1;
    if (strcmp(s, "avx512") == 0) return FL_ISA_AVX512;
    if (strcmp(s, "avx2") == 0) return FL_ISA_AVX2;
    if (strcmp(s, "generic") == 0) return FL_ISA_GENERIC;
    return -1;
}

/* Feature i of the CPU features the paths depend on (for fastlstm.show_config()):
 * 1 if present, 0 if not, -1 past the end of the list; *name gets its name. */
static int fl_cpu_feature(int i, const char **name)
{
#if FL_X86
    static const char *const names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"};
    if (i < 0 || i >= (int)(sizeof(names) / sizeof(names[0]))) return -1;
    *name = names[i];
    __builtin_cpu_init();
    switch (i) { /* __builtin_cpu_supports takes only literal names */
    case 0:
        return __builtin_cpu_supports("sse4.2") != 0;
    case 1:
        return __builtin_cpu_supports("avx") != 0;
    case 2:
        return __builtin_cpu_supports("avx2") != 0;
    case 3:
        return __builtin_cpu_supports("fma") != 0;
    case 4:
        return __builtin_cpu_supports("avx512f") != 0;
    case 5:
        return __builtin_cpu_supports("avx512vl") != 0;
    case 6:
        return __builtin_cpu_supports("avx512bw") != 0;
    default:
        return __builtin_cpu_supports("avx512dq") != 0;
    }
#elif defined(__aarch64__)
    if (i != 0) return -1;
    *name = "neon"; /* Advanced SIMD is part of every aarch64 CPU */
    return 1;
#else
    (void)i;
    (void)name;
    return -1;
#endif
}

static int fl_isa = FL_ISA_GENERIC;

#if defined(__GNUC__)
__attribute__((constructor))
#endif
static void fl_isa_init(void)
{
    const int cpu = fl_isa_cpu(), want = fl_isa_requested();
    fl_isa = want >= 0 && want < cpu ? want : cpu;
}

static inline int fl_isa_level(void) { return fl_isa; }

/* Define NAME(PARAMS) calling NAME_avx512, NAME_avx2 or NAME_generic with ARGS,
 * three copies of one always_inline body NAME_body compiled for each target. */
#if FL_X86
#define FL_ISA_VARIANTS(NAME, PARAMS, ARGS)                                                                            \
    FL_TARGET_AVX512 static void NAME##_avx512 PARAMS { NAME##_body ARGS; }                                            \
    FL_TARGET_AVX2 static void NAME##_avx2 PARAMS { NAME##_body ARGS; }                                                \
    static void NAME##_generic PARAMS { NAME##_body ARGS; }                                                            \
    static void NAME PARAMS                                                                                            \
    {                                                                                                                  \
        if (fl_isa == FL_ISA_AVX512)                                                                                   \
            NAME##_avx512 ARGS;                                                                                        \
        else if (fl_isa == FL_ISA_AVX2)                                                                                \
            NAME##_avx2 ARGS;                                                                                          \
        else                                                                                                           \
            NAME##_generic ARGS;                                                                                       \
    }
#else
#define FL_ISA_VARIANTS(NAME, PARAMS, ARGS)                                                                            \
    static void NAME PARAMS { NAME##_body ARGS; }
#endif

#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

#endif /* FASTLSTM_ISA_H */
