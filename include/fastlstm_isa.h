/* Which instruction set the kernels use: chosen once, when the module loads.
 *
 * Three base paths, each a complete set of the hot kernels (packed GEMM,
 * gemv, fused cell pass):
 *   FL_ISA_AVX512   x86-64 with AVX-512 (F, VL, BW, DQ): 16-float vectors
 *   FL_ISA_AVX2     x86-64 with AVX2 and FMA: 8-float vectors, 16 registers
 *   FL_ISA_GENERIC  portable C the compiler vectorises: SSE2 on any x86-64,
 *                   NEON (with fused multiply-add) on aarch64
 * and, for the reduced-precision products (fastlstm_lowp.h), extensions on
 * top of a base (fl_ext): FL_EXT_VNNI (int8 dot products: AVX512-VNNI on the
 * AVX-512 base, AVX-VNNI on the AVX2 one), FL_EXT_BF16 (AVX512-BF16) and
 * FL_EXT_AMX (AMX tiles, granted by the kernel on Linux).  A path is a base
 * with a set of extensions, named in fl_paths; the lowest paths are the
 * fallbacks (widening loads) that machines without the instructions run.
 *
 * The best path the CPU has is used, unless the environment variable
 * FASTLSTM_ISA names another; a request the CPU cannot run is clamped here to
 * the best lower path it can (never an illegal instruction) and refused with
 * a clear error by the Python layer (fastlstm/_isa.py).
 *
 * Every translation unit that includes this header gets its own copy of
 * fl_isa and fl_ext, set by a load-time constructor from the same CPU and
 * environment, so all compiled modules agree without any set-up call.
 * Kernels dispatch on them: one predictable branch per call.
 */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

#include <stdlib.h>
#include <string.h>

enum fl_isa_level { FL_ISA_GENERIC = 0, FL_ISA_AVX2 = 1, FL_ISA_AVX512 = 2 };
enum fl_isa_ext { FL_EXT_VNNI = 1, FL_EXT_BF16 = 2, FL_EXT_AMX = 4 };

/* The paths FASTLSTM_ISA names, lowest first: a base level and its extensions.  Each path's
 * requirements include every lower path's with the same base, so "the best path the CPU can
 * run at or below a request" is well defined. */
struct fl_path {
    const char *name;
    int isa, ext;
};
static const struct fl_path fl_paths[] = {
    {"generic", FL_ISA_GENERIC, 0},
    {"avx2", FL_ISA_AVX2, 0},
    {"avx2-vnni", FL_ISA_AVX2, FL_EXT_VNNI},
    {"avx512", FL_ISA_AVX512, 0},
    {"avx512-vnni", FL_ISA_AVX512, FL_EXT_VNNI},
    {"avx512-bf16", FL_ISA_AVX512, FL_EXT_VNNI | FL_EXT_BF16},
    {"amx", FL_ISA_AVX512, FL_EXT_VNNI | FL_EXT_BF16 | FL_EXT_AMX},
};
#define FL_N_PATHS ((int)(sizeof(fl_paths) / sizeof(fl_paths[0])))

#if defined(__GNUC__) && defined(__x86_64__)
#define FL_X86 1
#include <immintrin.h>
/* Feature lists rather than "arch=" names, so clang accepts them too. */
#define FL_TARGET_AVX512      __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FL_TARGET_AVX2        __attribute__((target("avx2,fma")))
#define FL_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma")))
#define FL_TARGET_AVX512_BF16                                                                                          \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512bf16,avx2,fma")))
#define FL_TARGET_AVX2_VNNI __attribute__((target("avx2,fma,avxvnni")))
#define FL_TARGET_AMX                                                                                                  \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512bf16,avx2,fma,amx-tile,amx-bf16,"       \
                          "amx-int8")))
#include <sys/syscall.h>
extern long syscall(long number, ...); /* <unistd.h> hides it under -std=c99 */
#else
#define FL_X86 0
#endif

/* The base level this CPU (and compiler) can run. */
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

#if FL_X86
/* Linux gives a process AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA); the grant covers every thread.  Other systems: no AMX. */
static int fl_amx_granted(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    return 0;
#endif
}
#endif

/* The extensions this CPU has that the given base can use. */
static int fl_ext_cpu(int isa)
{
    int ext = 0;
#if FL_X86
    __builtin_cpu_init();
    if (isa == FL_ISA_AVX512) {
        if (__builtin_cpu_supports("avx512vnni")) ext |= FL_EXT_VNNI;
        if ((ext & FL_EXT_VNNI) && __builtin_cpu_supports("avx512bf16")) ext |= FL_EXT_BF16;
        if ((ext & FL_EXT_BF16) && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
            __builtin_cpu_supports("amx-int8") && fl_amx_granted())
            ext |= FL_EXT_AMX;
    } else if (isa == FL_ISA_AVX2 && __builtin_cpu_supports("avxvnni")) {
        ext |= FL_EXT_VNNI;
    }
#else
    (void)isa;
#endif
    return ext;
}

/* Whether this CPU can run path p. */
static int fl_path_runs(int p)
{
    const int isa = fl_paths[p].isa;
    return isa <= fl_isa_cpu() && (fl_paths[p].ext & ~fl_ext_cpu(isa)) == 0;
}

/* The best path at or below path `upto` that this CPU runs (generic always does). */
static int fl_path_best(int upto)
{
    int p = upto;
    while (p > 0 && !fl_path_runs(p)) p--;
    return p;
}

/* FASTLSTM_ISA as a path index, or -1 when unset, empty or not a path name. */
static int fl_isa_requested(void)
{
    const char *s = getenv("FASTLSTM_ISA");
    if (s == NULL) return -1;
    for (int p = 0; p < FL_N_PATHS; p++)
        if (strcmp(s, fl_paths[p].name) == 0) return p;
    return -1;
}

/* Feature i of the CPU features the paths depend on (for fastlstm.show_config()):
 * 1 if present, 0 if not, -1 past the end of the list; *name gets its name. */
static int fl_cpu_feature(int i, const char **name)
{
#if FL_X86
    static const char *const names[] = {"sse4.2",     "avx",      "avx2",     "fma",     "avx512f",
                                        "avx512vl",   "avx512bw", "avx512dq", "avxvnni", "avx512vnni",
                                        "avx512bf16", "amx-tile", "amx-bf16", "amx-int8"};
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
    case 7:
        return __builtin_cpu_supports("avx512dq") != 0;
    case 8:
        return __builtin_cpu_supports("avxvnni") != 0;
    case 9:
        return __builtin_cpu_supports("avx512vnni") != 0;
    case 10:
        return __builtin_cpu_supports("avx512bf16") != 0;
    case 11:
        return __builtin_cpu_supports("amx-tile") != 0;
    case 12:
        return __builtin_cpu_supports("amx-bf16") != 0;
    default:
        return __builtin_cpu_supports("amx-int8") != 0;
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

static int fl_isa = FL_ISA_GENERIC, fl_ext = 0, fl_path = 0;

#if defined(__GNUC__)
__attribute__((constructor))
#endif
static void fl_isa_init(void)
{
    const int want = fl_isa_requested();
    fl_path = fl_path_best(want >= 0 ? want : FL_N_PATHS - 1);
    fl_isa = fl_paths[fl_path].isa;
    fl_ext = fl_paths[fl_path].ext;
}

static inline int fl_isa_level(void) { return fl_isa; }

/* The path in use and the best this CPU runs, as indexes of fl_paths. */
static inline int fl_path_in_use(void) { return fl_path; }
static inline int fl_path_cpu(void) { return fl_path_best(FL_N_PATHS - 1); }
static inline const char *fl_path_name(int p) { return p >= 0 && p < FL_N_PATHS ? fl_paths[p].name : NULL; }

/* Define NAME(PARAMS) calling NAME_avx512, NAME_avx2 or NAME_generic with ARGS,
 * each of which calls B512, B2 or BG (always_inline bodies, so each is compiled
 * for its target).  Off x86 NAME calls BG alone. */
#if FL_X86
#define FL_PATH_VARIANTS(NAME, PARAMS, ARGS, B512, B2, BG)                                                             \
    FL_TARGET_AVX512 static void NAME##_avx512 PARAMS { B512 ARGS; }                                                   \
    FL_TARGET_AVX2 static void NAME##_avx2 PARAMS { B2 ARGS; }                                                         \
    static void NAME##_generic PARAMS { BG ARGS; }                                                                     \
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
#define FL_PATH_VARIANTS(NAME, PARAMS, ARGS, B512, B2, BG)                                                             \
    static void NAME PARAMS { BG ARGS; }
#endif

/* Three copies of one body NAME_body, the same source for every target. */
#define FL_ISA_VARIANTS(NAME, PARAMS, ARGS) FL_PATH_VARIANTS(NAME, PARAMS, ARGS, NAME##_body, NAME##_body, NAME##_body)

/* Vectors of 16, 8 and 4 floats (GCC vector extensions; the ...u types: unaligned access). */
typedef float fl_v16 __attribute__((vector_size(64)));
typedef float fl_v16u __attribute__((vector_size(64), aligned(4)));
typedef float fl_v8 __attribute__((vector_size(32)));
typedef float fl_v8u __attribute__((vector_size(32), aligned(4)));
typedef float fl_v4 __attribute__((vector_size(16)));
typedef float fl_v4u __attribute__((vector_size(16), aligned(4)));

/* FL_ISA_VARIANTS for a body written once over vectors of W floats and defined
 * at each path's register width: NAME_w16 for AVX-512, NAME_w8 for AVX2 and
 * NAME_w4 for the generic path (SSE2, NEON).  GCC 12 lowers a vector wider than
 * the target's registers through the stack: with 16-float accumulators, the
 * AVX2 and generic single-row products ran 15x slower than AVX-512's. */
#define FL_WIDTH_VARIANTS(NAME, PARAMS, ARGS) FL_PATH_VARIANTS(NAME, PARAMS, ARGS, NAME##_w16, NAME##_w8, NAME##_w4)

#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

#endif /* FASTLSTM_ISA_H */
