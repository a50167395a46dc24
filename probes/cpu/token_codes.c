/* 2-bit, group = 32 token-axis codes of an f16 span [8, 16384, 128], one thread: codes by an
 * IEEE division per element (SPEC.md's formula, what kvq's host kernel does) against codes by
 * comparison with each group's three thresholds (kvq-ir's `Coding::per_group`), the same
 * parameters and packing; the codes must agree bit for bit. A one-thread copy of the input is
 * timed beside them. */
#include <immintrin.h>
#include "common.h"
#define ROWS (8 * 16384)

static __m128 round_f16(__m128 x) { return _mm_cvtph_ps(_mm_cvtps_ph(x, 0)); }

/* 16 codes (dwords) of 4 bytes, msb order, into the low bytes of 4 dwords. */
static __m128i pack(__m512i codes) {
    const __m512i shift = _mm512_set_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
    __m128i b = _mm512_cvtepi32_epi8(_mm512_sllv_epi32(codes, shift));
    return _mm_srli_epi32(_mm_mullo_epi32(b, _mm_set1_epi32(0x01010101)), 24);
}

static void run(const unsigned short *x, unsigned char *codes, unsigned short *zeros,
                unsigned short *scales, int thresholds) {
    for (int r = 0; r < ROWS; r++) {
        __m512 v[8];
        for (int i = 0; i < 8; i++)
            v[i] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + r * 128 + 16 * i)));
        float lo[4], hi[4], z[4], s[4], t[3][4];
        for (int g = 0; g < 4; g++) {
            lo[g] = _mm512_reduce_min_ps(_mm512_min_ps(v[2 * g], v[2 * g + 1]));
            hi[g] = _mm512_reduce_max_ps(_mm512_max_ps(v[2 * g], v[2 * g + 1]));
        }
        __m128 lo4 = _mm_loadu_ps(lo), hi4 = _mm_loadu_ps(hi);
        __m128 zero = round_f16(lo4), scale = round_f16(_mm_div_ps(_mm_sub_ps(hi4, lo4), _mm_set1_ps(3)));
        _mm_storel_epi64((__m128i *)(zeros + r * 4), _mm_cvtps_ph(zero, 0));
        _mm_storel_epi64((__m128i *)(scales + r * 4), _mm_cvtps_ph(scale, 0));
        _mm_storeu_ps(z, zero);
        _mm_storeu_ps(s, scale);
        __m128i out[8];
        if (!thresholds) {
            for (int i = 0; i < 8; i++) {
                int g = i / 2;
                __m512 q = _mm512_div_ps(_mm512_sub_ps(v[i], _mm512_set1_ps(z[g])), _mm512_set1_ps(s[g]));
                q = _mm512_max_ps(_mm512_set1_ps(-0.5f), _mm512_min_ps(_mm512_set1_ps(3), q));
                out[i] = pack(_mm512_cvtps_epi32(q));
            }
        } else {
            /* t_k = g = (k - 0.5) scale when g's own code reaches k, else the float above g. */
            for (int k = 1; k <= 3; k++) {
                __m128 g = _mm_mul_ps(_mm_set1_ps(k - 0.5f), scale);
                __m128 q = _mm_div_ps(g, scale);
                q = _mm_max_ps(_mm_set1_ps(-0.5f), _mm_min_ps(_mm_set1_ps(3), q));
                __m128i reached = _mm_cmpgt_epi32(_mm_cvtps_epi32(q), _mm_set1_epi32(k - 1));
                __m128 next = _mm_castsi128_ps(_mm_add_epi32(_mm_castps_si128(g), _mm_set1_epi32(1)));
                _mm_storeu_ps(t[k - 1], _mm_blendv_ps(next, g, _mm_castsi128_ps(reached)));
            }
            for (int i = 0; i < 8; i++) {
                int g = i / 2;
                __m512 d = _mm512_sub_ps(v[i], _mm512_set1_ps(z[g]));
                __m512i c = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
                for (int k = 0; k < 3; k++)
                    c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(d, _mm512_set1_ps(t[k][g]), _CMP_GE_OQ), c, one);
                out[i] = pack(c);
            }
        }
        unsigned *o = (unsigned *)(codes + r * 32);
        for (int i = 0; i < 8; i++)
            o[i] = (unsigned)_mm_extract_epi32(out[i], 0) | (unsigned)_mm_extract_epi32(out[i], 1) << 8 |
                   (unsigned)_mm_extract_epi32(out[i], 2) << 16 | (unsigned)_mm_extract_epi32(out[i], 3) << 24;
    }
}

int main(void) {
    size_t n = (size_t)ROWS * 128;
    unsigned short *x = aligned_alloc(64, n * 2), *copy = aligned_alloc(64, n * 2);
    for (size_t i = 0; i < n; i++) x[i] = _cvtss_sh((probe_unit() - 0.5f) * 4, 0);
    unsigned char *c_div = aligned_alloc(64, ROWS * 32), *c_thr = aligned_alloc(64, ROWS * 32);
    unsigned short *z = malloc(ROWS * 8), *s = malloc(ROWS * 8);
    double best[3] = {1e9, 1e9, 1e9};
    for (int round = 0; round < 15; round++) {
        double t[4];
        t[0] = probe_now();
        run(x, c_div, z, s, 0);
        t[1] = probe_now();
        run(x, c_thr, z, s, 1);
        t[2] = probe_now();
        memcpy(copy, x, n * 2);
        t[3] = probe_now();
        for (int i = 0; i < 3; i++)
            if (t[i + 1] - t[i] < best[i]) best[i] = t[i + 1] - t[i];
    }
    long differ = 0;
    for (long i = 0; i < ROWS * 32L; i++) differ += c_div[i] != c_thr[i];
    printf("token codes (2-bit, group = 32, one thread): division %.2f ms, thresholds %.2f ms "
           "(division / thresholds %.2fx), copy %.2f ms; code bytes that differ: %ld\n",
           best[0] * 1e3, best[1] * 1e3, best[0] / best[1], best[2] * 1e3, differ);
    return differ == 0 ? 0 : 1;
}
