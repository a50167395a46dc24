/* Key logits of a 1-bit, head_dim 128, group 4 work item (4,096 tokens, 8 kv heads): the byte
 * tables kvq's host kernels use (16 table reads of the 4 heads' entries a token, 64 KB of
 * tables) against nibble tables held in registers (vpermps over 16 tokens: 32 nibble positions
 * x 4 heads permutes per 16 tokens, 8 KB of tables), both checked against an f64 sum. */
#include <immintrin.h>
#include <math.h>
#include "common.h"
#define T 4096
#define G 4
#define HEADS 8

static float qs[G][128];
static __attribute__((aligned(64))) float lut[16][256][G];
static __attribute__((aligned(64))) float nib[G][32][16];
static __attribute__((aligned(64))) float out_bytes[T * G], out_perm[T * G];

/* Channel of bit `bit` (0 = least significant) of code byte `j`, msb order. */
static int channel(int j, int bit) { return j * 8 + 7 - bit; }

static void build(void) {
    for (int j = 0; j < 16; j++)
        for (int v = 0; v < 256; v++)
            for (int g = 0; g < G; g++) {
                float s = 0;
                for (int bit = 0; bit < 8; bit++)
                    if (v >> bit & 1) s += qs[g][channel(j, bit)];
                lut[j][v][g] = s;
            }
    for (int g = 0; g < G; g++)
        for (int j = 0; j < 16; j++)
            for (int h = 0; h < 2; h++)
                for (int v = 0; v < 16; v++) {
                    float s = 0;
                    for (int b = 0; b < 4; b++)
                        if (v >> b & 1) s += qs[g][channel(j, 4 * h + b)];
                    nib[g][2 * j + h][v] = s;
                }
}

static void bytes(const unsigned char *c) {
    for (int t = 0; t < T; t++) {
        const unsigned char *r = c + t * 16;
        __m128 a = _mm_setzero_ps(), b = a, d = a, e = a;
        for (int j = 0; j < 16; j += 4) {
            a = _mm_add_ps(a, _mm_load_ps(lut[j][r[j]]));
            b = _mm_add_ps(b, _mm_load_ps(lut[j + 1][r[j + 1]]));
            d = _mm_add_ps(d, _mm_load_ps(lut[j + 2][r[j + 2]]));
            e = _mm_add_ps(e, _mm_load_ps(lut[j + 3][r[j + 3]]));
        }
        _mm_store_ps(out_bytes + t * 4, _mm_add_ps(_mm_add_ps(a, b), _mm_add_ps(d, e)));
    }
}

static void permute(const unsigned char *c) {
    for (int t = 0; t < T; t += 16) {
        const __m512i *r = (const __m512i *)(c + t * 16);
        __m512i l0 = _mm512_loadu_si512(r), l1 = _mm512_loadu_si512(r + 1);
        __m512i l2 = _mm512_loadu_si512(r + 2), l3 = _mm512_loadu_si512(r + 3);
        /* Word k of token 4a + b is lane 4b + k of load a: gather word k of the 16 tokens. */
        __m512i w[4];
        for (int k = 0; k < 4; k++) {
            __m512i i = _mm512_set_epi32(28 + k, 24 + k, 20 + k, 16 + k, 12 + k, 8 + k, 4 + k, k,
                                         28 + k, 24 + k, 20 + k, 16 + k, 12 + k, 8 + k, 4 + k, k);
            w[k] = _mm512_mask_blend_epi32(0xff00, _mm512_permutex2var_epi32(l0, i, l1),
                                           _mm512_permutex2var_epi32(l2, i, l3));
        }
        __m512 acc[G][4];
        for (int g = 0; g < G; g++)
            for (int u = 0; u < 4; u++) acc[g][u] = _mm512_setzero_ps();
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
            _Pragma("GCC unroll 8") for (int n = 0; n < 8; n++) {
                __m512i ix = _mm512_srli_epi32(w[k], 4 * n);
                int j = 4 * k + n / 2, h = n & 1;
                for (int g = 0; g < G; g++)
                    acc[g][n & 3] = _mm512_add_ps(
                        acc[g][n & 3], _mm512_permutexvar_ps(ix, _mm512_load_ps(nib[g][2 * j + h])));
            }
        }
        for (int g = 0; g < G; g++) {
            __m512 s = _mm512_add_ps(_mm512_add_ps(acc[g][0], acc[g][1]),
                                     _mm512_add_ps(acc[g][2], acc[g][3]));
            /* Token-major, as kvq's logits are laid out: a scatter of 16 floats. */
            float lane[16];
            _mm512_storeu_ps(lane, s);
            for (int i = 0; i < 16; i++) out_perm[(t + i) * G + g] = lane[i];
        }
    }
}

int main(void) {
    for (int g = 0; g < G; g++)
        for (int c = 0; c < 128; c++) qs[g][c] = probe_unit() - 0.5f;
    build();
    unsigned char *codes = aligned_alloc(64, (size_t)T * 16 * HEADS);
    for (size_t i = 0; i < (size_t)T * 16 * HEADS; i++) codes[i] = probe_rand();
    bytes(codes);
    permute(codes);
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < G; g++) {
            double s = 0;
            for (int c = 0; c < 128; c++)
                if (codes[t * 16 + c / 8] >> (7 - c % 8) & 1) s += qs[g][c];
            double e = fmax(fabs(out_bytes[t * G + g] - s), fabs(out_perm[t * G + g] - s));
            if (e > worst) worst = e;
        }
    double best[2] = {1e9, 1e9};
    for (int round = 0; round < 40; round++) {
        double t0 = probe_now();
        for (int h = 0; h < HEADS; h++) bytes(codes + (size_t)h * T * 16);
        double t1 = probe_now();
        for (int h = 0; h < HEADS; h++) permute(codes + (size_t)h * T * 16);
        double t2 = probe_now();
        if (t1 - t0 < best[0]) best[0] = t1 - t0;
        if (t2 - t1 < best[1]) best[1] = t2 - t1;
    }
    double per = 1e9 / ((double)T * HEADS);
    printf("keys: byte tables %.2f ns, register nibble tables %.2f ns per (token, kv head); "
           "byte / nibble %.2fx; largest error against f64 %.1e\n",
           best[0] * per, best[1] * per, best[0] / best[1], worst);
    return worst < 1e-4 ? 0 : 1;
}
