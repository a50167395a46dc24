/* `P V` of 1-bit values, head_dim 128, group 4 (4,096 tokens, 8 kv heads): the per-byte
 * histograms kvq's host kernels use (16 read-modify-writes of the 4 heads' weights a token,
 * 64 KB) against masked adds into registers (32 masked vaddps a token) and, where the CPU has
 * AMX, bf16 tile products (the weights split into three bf16 parts, the bits expanded to bf16
 * {0, 1} tiles by `pdep`). Every result is checked against an f64 sum. */
#include <immintrin.h>
#include <math.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "common.h"
#define T 4096
#define G 4
#define HEADS 8

static __attribute__((aligned(64))) float w_tm[T * G]; /* token-major weights */
static __attribute__((aligned(64))) float w_hm[G][T];  /* head-major weights */
static __attribute__((aligned(64))) float hist[16][256][G];
static float out_hist[G][128], out_mask[G][128], out_amx[G][128];

/* Channels in lsb order here (channel c is bit c % 8 of byte c / 8): msb order permutes them
 * within each byte, which costs nothing at the end. */
static void histogram(const unsigned char *c) {
    memset(hist, 0, sizeof hist);
    for (int t = 0; t < T; t++) {
        __m128 w = _mm_load_ps(w_tm + t * G);
        const unsigned char *r = c + t * 16;
        for (int j = 0; j < 16; j++) {
            float *h = hist[j][r[j]];
            _mm_store_ps(h, _mm_add_ps(_mm_load_ps(h), w));
        }
    }
    /* Channel (j, b) sums the entries whose byte has bit b: four entries (16 floats) a
     * vector, whole for b >= 2, under a constant lane mask below. */
    for (int j = 0; j < 16; j++)
        for (int b = 0; b < 8; b++) {
            __m512 acc = _mm512_setzero_ps();
            __mmask16 lanes = b == 0 ? 0xF0F0 : b == 1 ? 0xFF00 : 0xFFFF;
            for (int v = 0; v < 256; v += 4)
                if (b < 2 || (v >> b & 1))
                    acc = _mm512_mask_add_ps(acc, lanes, acc, _mm512_load_ps(hist[j][v]));
            float lane[16];
            _mm512_storeu_ps(lane, acc);
            for (int g = 0; g < G; g++)
                out_hist[g][j * 8 + b] = (lane[g] + lane[4 + g]) + (lane[8 + g] + lane[12 + g]);
        }
}

static void masked(const unsigned char *c) {
    for (int half = 0; half < 2; half++) {
        __m512 a[G][4];
        for (int g = 0; g < G; g++)
            for (int b = 0; b < 4; b++) a[g][b] = _mm512_setzero_ps();
        for (int t = 0; t < T; t++) {
            const unsigned short *r = (const unsigned short *)(c + t * 16 + half * 8);
            _Pragma("GCC unroll 4") for (int b = 0; b < 4; b++) {
                __mmask16 k = r[b];
                _Pragma("GCC unroll 4") for (int g = 0; g < G; g++) a[g][b] =
                    _mm512_mask_add_ps(a[g][b], k, a[g][b], _mm512_set1_ps(w_tm[t * G + g]));
            }
        }
        for (int g = 0; g < G; g++)
            for (int b = 0; b < 4; b++) _mm512_storeu_ps(out_mask[g] + half * 64 + b * 16, a[g][b]);
    }
}

typedef struct {
    unsigned char palette, start, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} tile_config;
static __attribute__((aligned(64))) unsigned short amx_a[16][32];
static __attribute__((aligned(64))) unsigned short amx_b[16][32];
static __attribute__((aligned(64))) float amx_c[8][16][16];

static __m512 widen(__m256bh x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)x), 16));
}

/* A bf16 B tile (VNNI layout: row r holds tokens 2r and 2r + 1 of each of the 16 channels of
 * block `blk`, interleaved): the two tokens' 16 code bits interleaved by `pdep`, expanded to
 * words of 0 / 0xFFFF by `vpmovm2w` and and'ed with bf16 1.0. (Interleaving the expanded words
 * by `vpermt2w` instead took 14.3 ns.) */
static void b_tile(const unsigned char *c, int t0, int blk) {
    const __m512i one = _mm512_set1_epi16(0x3F80);
    for (int r = 0; r < 16; r++) {
        const unsigned char *row = c + (t0 + 2 * r) * 16 + 2 * blk;
        unsigned m0 = *(const unsigned short *)row, m1 = *(const unsigned short *)(row + 16);
        __mmask32 m = _pdep_u32(m0, 0x55555555u) | _pdep_u32(m1, 0xAAAAAAAAu);
        _mm512_store_si512(amx_b[r], _mm512_and_si512(_mm512_movm_epi16(m), one));
    }
}

#define DP(n, tmm)                                                                                 \
    do {                                                                                           \
        b_tile(c, t0, half * 4 + n);                                                               \
        _tile_loadd(1, amx_b, 64);                                                                 \
        _tile_dpbf16ps(tmm, 0, 1);                                                                 \
    } while (0)

static void amx(const unsigned char *c) {
    memset(amx_c, 0, sizeof amx_c);
    for (int half = 0; half < 2; half++) {
        _tile_loadd(4, amx_c[half * 4], 64);
        _tile_loadd(5, amx_c[half * 4 + 1], 64);
        _tile_loadd(6, amx_c[half * 4 + 2], 64);
        _tile_loadd(7, amx_c[half * 4 + 3], 64);
        for (int t0 = 0; t0 < T; t0 += 32) {
            /* A: rows 3g + s, the bf16 parts s of head g's weights of 32 tokens. */
            for (int g = 0; g < G; g++)
                for (int q = 0; q < 2; q++) {
                    __m512 x = _mm512_load_ps(&w_hm[g][t0 + 16 * q]);
                    __m256bh hi = _mm512_cvtneps_pbh(x);
                    __m512 rest = _mm512_sub_ps(x, widen(hi));
                    __m256bh mid = _mm512_cvtneps_pbh(rest);
                    __m256bh lo = _mm512_cvtneps_pbh(_mm512_sub_ps(rest, widen(mid)));
                    _mm256_store_si256((__m256i *)&amx_a[3 * g][16 * q], (__m256i)hi);
                    _mm256_store_si256((__m256i *)&amx_a[3 * g + 1][16 * q], (__m256i)mid);
                    _mm256_store_si256((__m256i *)&amx_a[3 * g + 2][16 * q], (__m256i)lo);
                }
            _tile_loadd(0, amx_a, 64);
            DP(0, 4);
            DP(1, 5);
            DP(2, 6);
            DP(3, 7);
        }
        _tile_stored(4, amx_c[half * 4], 64);
        _tile_stored(5, amx_c[half * 4 + 1], 64);
        _tile_stored(6, amx_c[half * 4 + 2], 64);
        _tile_stored(7, amx_c[half * 4 + 3], 64);
    }
    for (int g = 0; g < G; g++)
        for (int ch = 0; ch < 128; ch++) {
            float(*blk)[16] = amx_c[ch / 16];
            out_amx[g][ch] = blk[3 * g][ch % 16] + blk[3 * g + 1][ch % 16] + blk[3 * g + 2][ch % 16];
        }
}

static int amx_ready(void) {
    if (!__builtin_cpu_supports("amx-bf16")) return 0;
    /* ARCH_REQ_XCOMP_PERM for XTILEDATA (Linux 5.16+). */
    if (syscall(SYS_arch_prctl, 0x1023, 18)) return 0;
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 12, cfg.colsb[0] = 64;
    cfg.rows[1] = 16, cfg.colsb[1] = 64;
    for (int i = 4; i < 8; i++) cfg.rows[i] = 12, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
    return 1;
}

static double worst(const unsigned char *c, float out[G][128]) {
    double e = 0;
    for (int g = 0; g < G; g++)
        for (int ch = 0; ch < 128; ch++) {
            double s = 0;
            for (int t = 0; t < T; t++)
                if (c[t * 16 + ch / 8] >> (ch % 8) & 1) s += w_hm[g][t];
            e = fmax(e, fabs(out[g][ch] - s) / s);
        }
    return e;
}

int main(void) {
    for (int g = 0; g < G; g++)
        for (int t = 0; t < T; t++) w_tm[t * G + g] = w_hm[g][t] = probe_unit();
    unsigned char *codes = aligned_alloc(64, (size_t)T * 16 * HEADS);
    for (size_t i = 0; i < (size_t)T * 16 * HEADS; i++) codes[i] = probe_rand();
    int with_amx = amx_ready();
    histogram(codes);
    masked(codes);
    if (with_amx) amx(codes);
    double e_hist = worst(codes, out_hist), e_mask = worst(codes, out_mask);
    double e_amx = with_amx ? worst(codes, out_amx) : 0;
    double best[3] = {1e9, 1e9, 1e9};
    for (int round = 0; round < 30; round++) {
        double t[4];
        t[0] = probe_now();
        for (int h = 0; h < HEADS; h++) histogram(codes + (size_t)h * T * 16);
        t[1] = probe_now();
        for (int h = 0; h < HEADS; h++) masked(codes + (size_t)h * T * 16);
        t[2] = probe_now();
        for (int h = 0; with_amx && h < HEADS; h++) amx(codes + (size_t)h * T * 16);
        t[3] = probe_now();
        for (int i = 0; i < 3; i++)
            if (t[i + 1] - t[i] < best[i]) best[i] = t[i + 1] - t[i];
    }
    double per = 1e9 / ((double)T * HEADS);
    printf("values: byte histograms %.2f ns, masked adds %.2f ns (histograms / masked %.2fx)",
           best[0] * per, best[1] * per, best[0] / best[1]);
    if (with_amx)
        printf(", AMX bf16 tiles %.2f ns (histograms / AMX %.2fx)", best[2] * per, best[0] / best[2]);
    printf(" per (token, kv head); largest relative error against f64 %.1e / %.1e / %.1e\n", e_hist,
           e_mask, e_amx);
    return fmax(e_hist, fmax(e_mask, e_amx)) < 1e-4 ? 0 : 1;
}
