/* plugformer's native CPU kernel for QuantLinear: y = x @ W.T + bias with W stored as 4- or
 * 8-bit unsigned integers q and, per group of G input features, a scale s and an offset o
 * (W = s * q + o: GPTQ's o = -s * zero, GGUF Q4_1's minimum).
 *
 * The activations are quantized per block of 32 input features to int8 with a float scale
 * (like llama.cpp's Q8 activations): x ~ sx[b] * xq. The integer dot products run on AVX-512
 * VNNI (vpdpbusd: u8 weights x s8 activations, exact in int32). With c the middle of the
 * integer range (8 for 4 bits, 128 for 8 bits) and W = s * (q - c) + (o + c * s):
 *     y[n] = sum_g s[g, n] * sum_{b in g} sx[b] * (idot_b[n] - c * sum_{k in b} xq[k])
 *          + (o[g, n] + c * s[g, n]) * sum_{k in g} x[k].
 * The second term uses the exact float sum of x, so only (q - c) . x sees the activation
 * rounding (at most 1/254 of each block's largest |x| per element): centring q keeps a large
 * zero point (GPTQ's 128 for 8 bits) out of the error.
 *
 * Weights are re-laid out once (core/quant/kernels.py builds these arrays), in tiles of 16 output
 * rows so that one 512-bit register holds 16 rows x 4 input features (one int32 lane per row):
 *   bits 8: w[T][K/4][16 rows][4 bytes]    byte = q[16t + r][4j + i]
 *   bits 4: w[T][K/8][16 rows][4 bytes]    low nibble  = q[16t + r][8p + i],
 *                                          high nibble = q[16t + r][8p + 4 + i]
 *   s, o:   [T][K/G][16] float16 (o may be float32: o_f32 = 1)
 * T = ceil(N / 16); rows past N are zero and never written out.
 *
 * Built without AVX-512 VNNI the same arithmetic runs as portable C (pf_simd() returns 0).
 * Threads: OpenMP, the runtime torch itself uses (libgomp), nthreads passed per call.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    !defined(PF_PORTABLE)
#define PF_SIMD 1
#include <immintrin.h>
#else
#define PF_SIMD 0
#endif

#define PF_F32 0
#define PF_BF16 1
#define PF_F16 2

typedef struct {
    const uint8_t *w;     /* packed weights (layout above) */
    const uint16_t *s;    /* scales, float16 */
    const void *o;        /* offsets, float16 or float32 (o_f32) */
    const float *bias;    /* [N] or NULL */
    const int64_t *perm;  /* [K] input permutation (act-order) or NULL */
    int64_t n, k, group;  /* out features, in features, group size (multiple of 32) */
    int32_t bits;         /* 4 or 8 */
    int32_t o_f32;
} pf_layer;

int pf_simd(void) { return PF_SIMD; }
int pf_abi(void) { return 2; }

/* ---- scalar conversions ----------------------------------------------------------------- */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN kept */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_f16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (a < 0x38800000u) { /* subnormal or zero */
        float v;
        memcpy(&v, &a, 4);
        uint32_t m = (uint32_t)nearbyintf(v * 16777216.0f); /* 2^24 */
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;
    return (uint16_t)(sign | (r >> 13));
}

static inline float load_x(const void *x, int dt, int64_t i) {
    if (dt == PF_F32) return ((const float *)x)[i];
    if (dt == PF_BF16) return bf16_to_f32(((const uint16_t *)x)[i]);
    return f16_to_f32(((const uint16_t *)x)[i]);
}

static inline float load_o(const pf_layer *L, int64_t i) {
    return L->o_f32 ? ((const float *)L->o)[i] : f16_to_f32(((const uint16_t *)L->o)[i]);
}

/* ---- one tile of 16 output rows for up to 4 activation rows ----------------------------- */
#if PF_SIMD
static inline __m512 load_scales16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_offsets16(const pf_layer *L, int64_t i) {
    if (L->o_f32) return _mm512_loadu_ps((const float *)L->o + i);
    return load_scales16((const uint16_t *)L->o + i);
}

/* The integer dot products of one 32-feature block of a tile: lane r = sum_k q[r][k] * xq[k].
 * Four independent int32 chains hide vpdpbusd's latency. Four bits: 4 x 64 bytes, low nibbles
 * features 8p..8p+3 and high nibbles 8p+4..8p+7 of each; eight bits: 8 x 64 bytes. */
static inline __m512i block_q4(const uint8_t *wt, const int32_t *xv) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    __m512i a[4];
    for (int p = 0; p < 2; p++) {
        const __m512i v = _mm512_loadu_si512((const void *)(wt + 64 * p));
        a[2 * p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, nib),
                                       _mm512_set1_epi32(xv[2 * p]));
        a[2 * p + 1] = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                           _mm512_and_si512(_mm512_srli_epi16(v, 4), nib),
                                           _mm512_set1_epi32(xv[2 * p + 1]));
    }
    for (int p = 2; p < 4; p++) {
        const __m512i v = _mm512_loadu_si512((const void *)(wt + 64 * p));
        a[2 * p - 4] = _mm512_dpbusd_epi32(a[2 * p - 4], _mm512_and_si512(v, nib),
                                           _mm512_set1_epi32(xv[2 * p]));
        a[2 * p - 3] = _mm512_dpbusd_epi32(a[2 * p - 3],
                                           _mm512_and_si512(_mm512_srli_epi16(v, 4), nib),
                                           _mm512_set1_epi32(xv[2 * p + 1]));
    }
    return _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
}

static inline __m512i block_q8(const uint8_t *wt, const int32_t *xv) {
    __m512i a[4];
    for (int j = 0; j < 4; j++)
        a[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                   _mm512_loadu_si512((const void *)(wt + 64 * j)),
                                   _mm512_set1_epi32(xv[j]));
    for (int j = 0; j < 4; j++)
        a[j] = _mm512_dpbusd_epi32(a[j], _mm512_loadu_si512((const void *)(wt + 256 + 64 * j)),
                                   _mm512_set1_epi32(xv[4 + j]));
    return _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
}

/* One tile of 16 output rows against one activation row: lane r = y[16t + r] (no bias). */
static inline __m512 tile_dot(const pf_layer *L, int64_t t, const int8_t *xq, const float *sx,
                              const int32_t *xs, const float *gs) {
    const int four = L->bits == 4;
    const int64_t k = L->k, groups = k / L->group, per_group = L->group / 32;
    const int64_t block_bytes = four ? 256 : 512;
    const int32_t c = four ? 8 : 128;
    const uint8_t *wt = L->w + t * (four ? 8 : 16) * k;
    const uint16_t *st = L->s + t * groups * 16;
    const int64_t ot = t * groups * 16;
    const __m512 centre = _mm512_set1_ps((float)c);
    __m512 y = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m512 blk = _mm512_setzero_ps();
        for (int64_t bb = 0; bb < per_group; bb++, wt += block_bytes, xq += 32) {
            const int64_t b = g * per_group + bb;
            const int32_t *xv = (const int32_t *)xq;
            const __m512i dot = four ? block_q4(wt, xv) : block_q8(wt, xv);
            const __m512i sum = _mm512_sub_epi32(dot, _mm512_set1_epi32(c * xs[b]));
            blk = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(sx[b]), blk);
        }
        const __m512 sv = load_scales16(st + 16 * g);
        const __m512 ov = _mm512_fmadd_ps(sv, centre, load_offsets16(L, ot + 16 * g));
        y = _mm512_fmadd_ps(blk, sv, y);
        y = _mm512_fmadd_ps(ov, _mm512_set1_ps(gs[g]), y);
    }
    return y;
}

/* 16 values from x[i..i+15] of dtype dt, as float32 */
static inline __m512 load16(const void *x, int dt, int64_t i) {
    if (dt == PF_F32) return _mm512_loadu_ps((const float *)x + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
    if (dt == PF_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* the lanes of mask of v to y[i..] in dtype dt (bf16: round to nearest even, NaN kept) */
static inline void store16(void *y, int dt, int64_t i, __m512 v, __mmask16 mask) {
    if (dt == PF_F32) {
        _mm512_mask_storeu_ps((float *)y + i, mask, v);
        return;
    }
    __m256i h;
    if (dt == PF_F16) {
        h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        const __m512i u = _mm512_castps_si512(v);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        h = _mm512_cvtepi32_epi16(r);
    }
    _mm256_mask_storeu_epi16((uint16_t *)y + i, mask, h);
}
#endif

/* ---- activations: int8 per block of 32, float scale, exact float sum per group ----------- */
static void quantize_row(const pf_layer *L, const void *x, int dt, int8_t *xq, float *sx,
                         int32_t *xs, float *gsum, float *xf) {
    const int64_t k = L->k, blocks = k / 32, per_group = L->group / 32;
    if (L->perm || !PF_SIMD) { /* gather (act-order) and convert first */
        for (int64_t i = 0; i < k; i++) xf[i] = load_x(x, dt, L->perm ? L->perm[i] : i);
        x = xf;
        dt = PF_F32;
    }
    for (int64_t b = 0; b < blocks; b++) {
        float amax, sum;
#if PF_SIMD
        const __m512 v0 = load16(x, dt, 32 * b), v1 = load16(x, dt, 32 * b + 16);
        amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        sum = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        _mm_storeu_si128((__m128i *)(xq + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(xq + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        xs[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
#else
        const float *v = (const float *)x + 32 * b;
        amax = 0.0f;
        sum = 0.0f;
        for (int i = 0; i < 32; i++) {
            float a = fabsf(v[i]);
            amax = a > amax ? a : amax;
            sum += v[i];
        }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t isum = 0;
        for (int i = 0; i < 32; i++) {
            xq[32 * b + i] = (int8_t)nearbyintf(v[i] * inv);
            isum += xq[32 * b + i];
        }
        xs[b] = isum;
#endif
        sx[b] = amax / 127.0f;
        if (b % per_group == 0) gsum[b / per_group] = 0.0f;
        gsum[b / per_group] += sum;
    }
}

#if !PF_SIMD
/* the same arithmetic in plain C: y[16t .. 16t + 15] for one activation row */
static void tile_portable(const pf_layer *L, int64_t t, const int8_t *xq, const float *sx,
                          const int32_t *xs, const float *gs, float out[16]) {
    const int64_t k = L->k, groups = k / L->group, per_group = L->group / 32;
    const int32_t c = L->bits == 4 ? 8 : 128;
    const uint8_t *wt = L->w + t * (L->bits == 4 ? 8 * k : 16 * k);
    for (int r = 0; r < 16; r++) {
        float y = 0.0f;
        for (int64_t g = 0; g < groups; g++) {
            float blk = 0.0f;
            for (int64_t bb = 0; bb < per_group; bb++) {
                const int64_t b = g * per_group + bb;
                int32_t dot = 0;
                for (int kk = 0; kk < 32; kk++) {
                    const int64_t kf = 32 * b + kk;
                    int q;
                    if (L->bits == 4) {
                        const uint8_t byte = wt[64 * (kf / 8) + 4 * r + (kf % 4)];
                        q = kf % 8 < 4 ? (byte & 0x0f) : (byte >> 4);
                    } else {
                        q = wt[64 * (kf / 4) + 4 * r + (kf % 4)];
                    }
                    dot += q * (int32_t)xq[kf];
                }
                blk += (float)(dot - c * xs[b]) * sx[b];
            }
            const int64_t si = (t * groups + g) * 16 + r;
            const float sc = f16_to_f32(L->s[si]);
            y += blk * sc + (load_o(L, si) + sc * (float)c) * gs[g];
        }
        out[r] = y;
    }
}

static inline void store_y(void *y, int dt, int64_t i, float v) {
    if (dt == PF_F32)
        ((float *)y)[i] = v;
    else if (dt == PF_BF16)
        ((uint16_t *)y)[i] = f32_to_bf16(v);
    else
        ((uint16_t *)y)[i] = f32_to_f16(v);
}
#endif

/* y[M][N] (dtype ydt) = x[M][K] (dtype xdt, contiguous) @ W.T + bias.
 * Returns 0, or -1 when scratch memory could not be allocated (nothing written). */
int pf_qlinear(const pf_layer *L, const void *x, int xdt, int64_t rows, void *y, int ydt,
               int nthreads) {
    const int64_t k = L->k, n = L->n, tiles = (n + 15) / 16, blocks = k / 32;
    const int64_t groups = k / L->group;
    const size_t per_row = (size_t)k + sizeof(float) * (size_t)(2 * blocks + groups + k);
    char *scratch = (char *)malloc((size_t)rows * per_row);
    if (!scratch) return -1;
    int8_t *xq = (int8_t *)scratch;
    float *sx = (float *)(scratch + (size_t)rows * k);
    int32_t *xs = (int32_t *)(sx + rows * blocks);
    float *gs = (float *)(xs + rows * blocks);
    float *xf = gs + rows * groups; /* conversion space, one row per activation row */
    const size_t xsize = xdt == PF_F32 ? 4 : 2;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (rows >= 4)
    for (int64_t m = 0; m < rows; m++)
        quantize_row(L, (const char *)x + m * k * xsize, xdt, xq + m * k, sx + m * blocks,
                     xs + m * blocks, gs + m * groups, xf + m * k);
    /* work items (tile, row), rows inner: a tile's weights stay in cache across the rows */
    const int64_t items = tiles * rows;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t it = 0; it < items; it++) {
        const int64_t t = it / rows, m = it % rows;
        const int64_t nr = n - 16 * t < 16 ? n - 16 * t : 16;
        const int8_t *xr = xq + m * k;
        const float *sr = sx + m * blocks, *gr = gs + m * groups;
        const int32_t *isr = xs + m * blocks;
#if PF_SIMD
        const __mmask16 mask = (__mmask16)((1u << nr) - 1u);
        __m512 v = tile_dot(L, t, xr, sr, isr, gr);
        if (L->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, L->bias + 16 * t));
        store16(y, ydt, m * n + 16 * t, v, mask);
#else
        float out[16];
        tile_portable(L, t, xr, sr, isr, gr, out);
        for (int64_t r = 0; r < nr; r++)
            store_y(y, ydt, m * n + 16 * t + r, out[r] + (L->bias ? L->bias[16 * t + r] : 0.0f));
#endif
    }
    free(scratch);
    return 0;
}
