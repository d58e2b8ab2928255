/* Compiled loops for the decoding workers' per-image work, a chunk of images per call (see kernels.py).

   Plain C, no Python API: loaded with ctypes, so it builds wherever a C compiler and zlib's header are
   (`pip install` tries; without them the numpy code in similar.py, quality.py and preprocess.py runs).
   Each function mirrors its numpy original, written beside it in the comments. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ reading files (preprocess.read_source) */
/* Read files one after another into buf (cap bytes) until the next would not fit: file k's path is the
   NUL-terminated string at paths + path_off[k]. Returns how many files it went through; for each, off and len
   (where its bytes are in buf), size and mtime (ns) as fstat gave them, and status: 0 read whole, 1 left to
   the caller (any error, not a regular file, a size that changed while read, too large for buf alone). */
int64_t read_files(const char *paths, const int64_t *path_off, int64_t n, uint8_t *buf, int64_t cap,
                   int64_t *off, int64_t *len, int64_t *size, int64_t *mtime, int32_t *status) {
    int64_t used = 0, k = 0;
    for (; k < n; k++) {
        off[k] = used;
        len[k] = size[k] = mtime[k] = 0;
        status[k] = 1;
        int fd = open(paths + path_off[k], O_RDONLY);
        if (fd < 0) continue;
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); continue; }
        int64_t want = (int64_t)st.st_size;
        if (used + want + 1 > cap) {
            close(fd);
            if (k == 0) continue;  /* too large alone: the caller reads it */
            break;                 /* the next group starts with it */
        }
        int64_t got = 0;
        for (;;) {  /* one byte more than its size: a file that grew is noticed; a short read is its end */
            ssize_t r = read(fd, buf + used + got, (size_t)(want + 1 - got));
            if (r <= 0) break;
            got += r;
            if (got > want || r < want + 1 - (got - r)) break;
        }
        close(fd);
        if (got != want) continue;
        len[k] = size[k] = want;
#ifdef __APPLE__
        mtime[k] = (int64_t)st.st_mtimespec.tv_sec * 1000000000LL + st.st_mtimespec.tv_nsec;
#else
        mtime[k] = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
#endif
        status[k] = 0;
        used += want;
    }
    return k;
}

/* ------------------------------------------------------------------ PNG: the plain ones (preprocess.plain_png) */
enum { PNG_OK = 0, PNG_OTHER = 1 };  /* OTHER: not plain, or any trouble: the general path decodes it (and says why) */

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static const uint8_t SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* A chunk type libpng reads without complaint: four ASCII letters, the reserved bit clear, and, when
   critical (upper-case first letter), one of IHDR, IDAT and IEND. */
static int known_type(const uint8_t *t) {
    for (int k = 0; k < 4; k++)
        if (!((t[k] >= 'A' && t[k] <= 'Z') || (t[k] >= 'a' && t[k] <= 'z'))) return 0;
    if (t[2] & 0x20) return 0;
    return (t[0] & 0x20) || !memcmp(t, "IHDR", 4) || !memcmp(t, "IDAT", 4) || !memcmp(t, "IEND", 4);
}

/* Width, height and channels of each of n files (bytes data[off[i]:off[i] + len[i]]) that is a plain PNG:
   8-bit gray or RGB, not interlaced, no transparency chunk, no EXIF chunk, every chunk whole, of a known
   type and its CRC right, one IHDR (first) and one run of IDAT chunks, min_side <= its sides <= max_side and
   at most max_pixels pixels. status[i]: PNG_OK or PNG_OTHER. */
void png_info(const uint8_t *data, const int64_t *off, const int64_t *len, int64_t n, int64_t min_side,
              int64_t max_side, int64_t max_pixels, int32_t *width, int32_t *height, int32_t *channels,
              int32_t *status) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = data + off[i];
        int64_t size = len[i];
        status[i] = PNG_OTHER;
        width[i] = height[i] = channels[i] = 0;
        if (size < 33 || memcmp(p, SIG, 8) != 0 || be32(p + 8) != 13 || memcmp(p + 12, "IHDR", 4) != 0) continue;
        uint32_t w = be32(p + 16), h = be32(p + 20);
        uint8_t depth = p[24], ctype = p[25], comp = p[26], filt = p[27], interlace = p[28];
        if (depth != 8 || (ctype != 0 && ctype != 2) || comp || filt || interlace) continue;
        if (w == 0 || h == 0) continue;
        uint32_t lo = w < h ? w : h, hi = w < h ? h : w;
        if ((int64_t)lo < min_side || (int64_t)hi > max_side || (int64_t)w * (int64_t)h > max_pixels) continue;
        int ok = 0, bad = 0, idat = 0;  /* idat: 0 none yet, 1 in the run, 2 after it */
        for (int64_t at = 8; !bad;) {
            if (at + 12 > size) { bad = 1; break; }
            uint32_t clen = be32(p + at);
            if ((int64_t)clen > size - at - 12) { bad = 1; break; }
            const uint8_t *type = p + at + 4;
            if (crc32(0L, type, clen + 4) != be32(p + at + 8 + clen)) { bad = 1; break; }
            if (!known_type(type) || !memcmp(type, "tRNS", 4) || !memcmp(type, "eXIf", 4)) { bad = 1; break; }
            if (!memcmp(type, "IHDR", 4) && at != 8) { bad = 1; break; }
            int is_idat = !memcmp(type, "IDAT", 4);
            if (is_idat && idat == 2) { bad = 1; break; }  /* a second run of IDAT chunks */
            if (is_idat) idat = 1;
            else if (idat == 1) idat = 2;
            if (!memcmp(type, "IEND", 4)) { ok = idat != 0; break; }
            at += 12 + (int64_t)clen;
        }
        if (!ok || bad) continue;
        width[i] = (int32_t)w;
        height[i] = (int32_t)h;
        channels[i] = ctype == 2 ? 3 : 1;
        status[i] = PNG_OK;
    }
}

static int paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
}

/* Undo the filters of h rows of `stride` bytes (each after its filter byte) into out; 0, or -1: a bad filter. */
static int unfilter(const uint8_t *raw, uint8_t *out, int64_t h, int64_t stride, int bpp) {
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *src = raw + y * (stride + 1) + 1;
        uint8_t *row = out + y * stride, *up = y ? row - stride : NULL;
        switch (raw[y * (stride + 1)]) {
        case 0: memcpy(row, src, (size_t)stride); break;
        case 1:
            for (int64_t x = 0; x < stride; x++) row[x] = (uint8_t)(src[x] + (x >= bpp ? row[x - bpp] : 0));
            break;
        case 2:
            for (int64_t x = 0; x < stride; x++) row[x] = (uint8_t)(src[x] + (up ? up[x] : 0));
            break;
        case 3:
            for (int64_t x = 0; x < stride; x++)
                row[x] = (uint8_t)(src[x] + (((x >= bpp ? row[x - bpp] : 0) + (up ? up[x] : 0)) >> 1));
            break;
        case 4:
            for (int64_t x = 0; x < stride; x++) {
                int a = x >= bpp ? row[x - bpp] : 0, b = up ? up[x] : 0, c = (up && x >= bpp) ? up[x - bpp] : 0;
                row[x] = (uint8_t)(src[x] + paeth(a, b, c));
            }
            break;
        default: return -1;
        }
    }
    return 0;
}

/* Decode the files png_info found plain (status PNG_OK) into out at out_off[i] (height x width x channels
   bytes, as stored: RGB in R, G, B order); a file whose data inflates to fewer bytes than its rows, whose zlib
   stream does not end (or ends with a wrong checksum), or with a bad filter byte becomes PNG_OTHER (bytes
   past the rows are dropped, as libpng does). scratch: at least the largest (1 + width * channels) * height
   bytes. */
void png_decode(const uint8_t *data, const int64_t *off, const int64_t *len, int64_t n, const int32_t *width,
                const int32_t *height, const int32_t *channels, int32_t *status, uint8_t *out,
                const int64_t *out_off, uint8_t *scratch) {
    z_stream z;
    uint8_t sink[4096];
    memset(&z, 0, sizeof z);
    int ready = inflateInit(&z) == Z_OK;
    for (int64_t i = 0; i < n; i++) {
        if (status[i] != PNG_OK) continue;
        const uint8_t *p = data + off[i];
        int64_t stride = (int64_t)width[i] * channels[i], want = (stride + 1) * height[i];
        if (!ready || inflateReset(&z) != Z_OK) { status[i] = PNG_OTHER; continue; }
        z.next_out = scratch;
        z.avail_out = (uInt)want;
        int rc = Z_OK;
        for (int64_t at = 8; at + 12 <= len[i];) {
            uint32_t clen = be32(p + at);
            const uint8_t *type = p + at + 4;
            if (!memcmp(type, "IEND", 4)) break;
            if (!memcmp(type, "IDAT", 4) && rc == Z_OK) {
                z.next_in = (Bytef *)(p + at + 8);
                z.avail_in = clen;
                while (rc == Z_OK && z.avail_in > 0) {
                    if (z.avail_out == 0) { z.next_out = sink; z.avail_out = sizeof sink; }  /* past the rows: dropped */
                    rc = inflate(&z, Z_NO_FLUSH);
                }
            }
            at += 12 + (int64_t)clen;
        }
        /* whole: the rows complete and the stream ended (its checksum right), as libpng and Pillow want it */
        int whole = rc == Z_STREAM_END && z.total_out >= (uLong)want;
        if (!whole || unfilter(scratch, out + out_off[i], height[i], stride, channels[i]) != 0) status[i] = PNG_OTHER;
    }
    if (ready) inflateEnd(&z);
}

/* ------------------------------------------------------------------ the canonical view (similar._canonical_stack) */
#define SIDE 32
#define THUMB 16
#define SPREAD 8.0
#define PLAIN 32

/* The k-th smallest of the counts' values (counts: a histogram of 256 levels). */
static int kth(const int64_t *counts, int64_t k) {
    int64_t seen = 0;
    for (int v = 0; v < 256; v++) {
        seen += counts[v];
        if (seen > k) return v;
    }
    return 255;
}

/* The 8 lowest rows of the orthonormal 32-point DCT-II (similar._dct_rows). */
static void dct_rows(double d[8][SIDE]) {
    for (int k = 0; k < 8; k++)
        for (int i = 0; i < SIDE; i++)
            d[k][i] = cos(M_PI * (2 * i + 1) * k / (2.0 * SIDE)) * sqrt(2.0 / SIDE) / (k ? 1.0 : sqrt(2.0));
}

/* The k-th smallest of a[0..n) (reorders a: a[0..k) are then the k smallest). */
static double select_kth(double *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = a[(lo + hi) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) { double t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return a[k];
    }
    return a[k];
}

/* The mass (total weight), centre and variances of an image's row weights wy (h) and column weights wx (w). */
typedef struct { double mass, cy, cx, vy, vx; } Spread;

static Spread spread_of(const double *wy, const double *wx, int64_t h, int64_t w) {
    Spread s = {0, 0, 0, 0, 0};
    for (int64_t y = 0; y < h; y++) { s.mass += wy[y]; s.cy += wy[y] * y; s.vy += wy[y] * (double)y * y; }
    for (int64_t x = 0; x < w; x++) { s.cx += wx[x] * x; s.vx += wx[x] * (double)x * x; }
    double safe = fmax(s.mass, 1e-6);
    s.cy /= safe; s.cx /= safe;
    s.vy = fmax(s.vy / safe - s.cy * s.cy, 1e-6);
    s.vx = fmax(s.vx / safe - s.cx * s.cx, 1e-6);
    return s;
}

/* The 32 x 32 view of g (h x w) centred on (cy, cx) at `scale` view pixels per image pixel (negated when
   flip), by bilinear taps, separable: every source row sampled at the 32 columns (tmp, h x 32), then those
   rows at the 32 rows; a tap outside the image reads the border's level. rowf: w + 1 floats. */
static void sample_view(const uint8_t *g, int64_t h, int64_t w, double cy, double cx, double scale, double level,
                        int flip, float *view, float *rowf, float *tmp) {
    double mid = (SIDE - 1) / 2.0;
    float fx[SIDE];
    int64_t xa[SIDE], xb[SIDE];  /* taps into the row with the level after it (index w: outside) */
    for (int d = 0; d < SIDE; d++) {
        double sx = cx + (d - mid) / scale;
        int64_t x0 = (int64_t)floor(sx);
        fx[d] = (float)(sx - (double)x0);
        xa[d] = (x0 >= 0 && x0 < w) ? x0 : w;
        xb[d] = (x0 + 1 >= 0 && x0 + 1 < w) ? x0 + 1 : w;
    }
    rowf[w] = (float)level;
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = g + y * w;
        for (int64_t x = 0; x < w; x++) rowf[x] = row[x];
        for (int d = 0; d < SIDE; d++) {
            float va = rowf[xa[d]], vb = rowf[xb[d]];
            tmp[y * SIDE + d] = va + fx[d] * (vb - va);
        }
    }
    float edge[SIDE];
    for (int d = 0; d < SIDE; d++) edge[d] = (float)level;
    for (int dy = 0; dy < SIDE; dy++) {
        double sy = cy + (dy - mid) / scale;
        int64_t y0 = (int64_t)floor(sy);
        float fy = (float)(sy - (double)y0);
        const float *r0 = (y0 >= 0 && y0 < h) ? tmp + y0 * SIDE : edge;
        const float *r1 = (y0 + 1 >= 0 && y0 + 1 < h) ? tmp + (y0 + 1) * SIDE : edge;
        float *out = view + dy * SIDE;
        for (int d = 0; d < SIDE; d++) {
            float v = r0[d] + fy * (r1[d] - r0[d]);
            out[d] = flip ? 255.0f - v : v;
        }
    }
}

/* One image's canonical view (32 x 32 floats) and whether it was negated. */
static int canonical(const uint8_t *g, int64_t h, int64_t w, float *view, double *wy, double *wx, float *wxf,
                     float *rowf, float *tmp) {
    int64_t counts[256] = {0}, nb = 0;
    for (int64_t x = 0; x < w; x++) { counts[g[x]]++; counts[g[(h - 1) * w + x]]++; nb += 2; }
    for (int64_t y = 1; y < h - 1; y++) { counts[g[y * w]]++; counts[g[y * w + w - 1]]++; nb += 2; }
    double q25 = kth(counts, nb / 4), level = kth(counts, nb / 2), q75 = kth(counts, (3 * nb) / 4);
    int64_t sum = 0, top = 0;
    for (int64_t k = 0; k < h * w; k++) {
        sum += g[k];
        int64_t d = llabs((int64_t)g[k] - (int64_t)level);
        if (d > top) top = d;
    }
    int flip = (double)sum / (double)(h * w) < level - 4;
    double floor_ = fmax(4.0, 0.1 * (double)top);
    float lut[256], *fx_ = rowf;  /* each gray level's weight: how far beyond the noise floor it is from level */
    for (int v = 0; v < 256; v++) lut[v] = (float)fmax(fabs((double)v - level) - floor_, 0.0);
    memset(wy, 0, sizeof(double) * h);
    memset(wxf, 0, sizeof(float) * w);
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = g + y * w;
        float sum_ = 0;
        for (int64_t x = 0; x < w; x++) fx_[x] = lut[row[x]];
        for (int64_t x = 0; x < w; x++) { sum_ += fx_[x]; wxf[x] += fx_[x]; }
        wy[y] = sum_;
    }
    for (int64_t x = 0; x < w; x++) wx[x] = wxf[x];
    Spread sp = spread_of(wy, wx, h, w);
    double cy = sp.cy, cx = sp.cx;
    int empty = sp.mass <= 0;
    double base = (double)SIDE / (double)(h > w ? h : w), scale = base;
    if (q75 - q25 <= PLAIN && !empty) scale = fmin(fmax(SPREAD / sqrt(sp.vy + sp.vx), base / 4), base * 4);
    if (empty) { cy = (h - 1) / 2.0; cx = (w - 1) / 2.0; }
    sample_view(g, h, w, cy, cx, scale, level, flip, view, rowf, tmp);
    return flip;
}

/* similar.signatures of m same-shape uint8 gray images (m, h, w): 64-bit perceptual hashes, 16x16
   thumbnails (2x2 means of the view, rounded) and which views are negatives. */
void signatures(const uint8_t *g, int64_t m, int64_t h, int64_t w, uint64_t *hashes, uint8_t *thumbs,
                uint8_t *negative) {
    double d[8][SIDE];
    float dt[SIDE][8];
    dct_rows(d);
    float de[SIDE / 2][4], dq[SIDE / 2][4];  /* the even rows' and the odd rows' first halves */
    for (int x = 0; x < SIDE; x++)
        for (int v = 0; v < 8; v++) dt[x][v] = (float)d[v][x];
    for (int x = 0; x < SIDE / 2; x++)
        for (int j = 0; j < 4; j++) { de[x][j] = (float)d[2 * j][x]; dq[x][j] = (float)d[2 * j + 1][x]; }
    float view[SIDE * SIDE], low[64];
    double rest[63];
    double *wy = malloc(sizeof(double) * (size_t)(h + w));
    float *wxf = malloc(sizeof(float) * (size_t)(w + (w + 1) + h * SIDE)), *rowf = wxf + w, *tmp = rowf + w + 1;
    if (!wy || !wxf) { free(wy); free(wxf); return; }
    double *wx = wy + h;
    for (int64_t i = 0; i < m; i++) {
        negative[i] = (uint8_t)canonical(g + i * h * w, h, w, view, wy, wx, wxf, rowf, tmp);
        for (int ty = 0; ty < THUMB; ty++)
            for (int tx = 0; tx < THUMB; tx++) {
                const float *v = view + 2 * ty * SIDE + 2 * tx;
                float mean = (v[0] + v[1] + v[SIDE] + v[SIDE + 1]) * 0.25f + 0.5f;
                thumbs[i * THUMB * THUMB + ty * THUMB + tx] = (uint8_t)(mean < 0 ? 0 : mean > 255 ? 255 : mean);
            }
        /* the 8x8 lowest 2-D DCT coefficients, folded: row k of the DCT is even (k even) or odd about the
           middle, so each row's 32 samples become 16 sums and 16 differences, and the same down the columns */
        float cols[SIDE][8];
        for (int y = 0; y < SIDE; y++) {
            const float *row = view + y * SIDE;
            float ce[4] = {0}, co[4] = {0};
            for (int x = 0; x < SIDE / 2; x++) {
                float e = row[x] + row[SIDE - 1 - x], o = row[x] - row[SIDE - 1 - x];
                for (int j = 0; j < 4; j++) { ce[j] += e * de[x][j]; co[j] += o * dq[x][j]; }
            }
            for (int j = 0; j < 4; j++) { cols[y][2 * j] = ce[j]; cols[y][2 * j + 1] = co[j]; }
        }
        memset(low, 0, sizeof low);
        for (int y = 0; y < SIDE / 2; y++) {
            float e[8], o[8];
            for (int v = 0; v < 8; v++) { e[v] = cols[y][v] + cols[SIDE - 1 - y][v]; o[v] = cols[y][v] - cols[SIDE - 1 - y][v]; }
            for (int u = 0; u < 8; u++)
                for (int v = 0; v < 8; v++) low[u * 8 + v] += ((u & 1) ? o[v] : e[v]) * dt[y][u];
        }
        for (int k = 0; k < 63; k++) rest[k] = low[k + 1];
        double median = select_kth(rest, 63, 31);
        uint64_t bits = 0;
        for (int k = 0; k < 64; k++) bits = (bits << 1) | (uint64_t)(low[k] > median);
        hashes[i] = bits;
    }
    free(wy);
    free(wxf);
}

/* ------------------------------------------------------------------ image statistics (quality._gray_stats) */
/* (m, 5) float32: p01, p50, p99, sharpness (-1 where the image is flat), entropy of the 32-bin histogram. */
void gray_stats(const uint8_t *g, int64_t m, int64_t h, int64_t w, float *out) {
    int64_t n = h * w;
    int64_t ks[3] = {(int64_t)(0.01 * (double)(n - 1)), (n - 1) / 2, (int64_t)llround(0.99 * (double)(n - 1))};
    for (int64_t i = 0; i < m; i++) {
        const uint8_t *p = g + i * n;
        int64_t hist[256] = {0};
        for (int64_t k = 0; k < n; k++) hist[p[k]]++;
        float *o = out + i * 5;
        for (int c = 0; c < 3; c++) o[c] = (float)kth(hist, ks[c]);
        double s1 = 0, s2 = 0;
        for (int v = 0; v < 256; v++) { s1 += (double)hist[v] * v; s2 += (double)hist[v] * v * v; }
        double mean = s1 / n, std = sqrt(fmax(s2 / n - mean * mean, 0)), sharp = 0;
        if (h >= 3 && w >= 3) {
            double l1 = 0, l2 = 0;
            int64_t cnt = (h - 2) * (w - 2);
            for (int64_t y = 1; y < h - 1; y++)
                for (int64_t x = 1; x < w - 1; x++) {
                    const uint8_t *c = p + y * w + x;
                    double lap = (double)c[-w] + c[w] + c[-1] + c[1] - 4.0 * c[0];
                    l1 += lap; l2 += lap * lap;
                }
            double lm = l1 / cnt;
            sharp = sqrt(fmax(l2 / cnt - lm * lm, 0)) / fmax(std, 1e-6);
        }
        o[3] = std >= 2 ? (float)sharp : -1.0f;
        double ent = 0;
        for (int b = 0; b < 32; b++) {
            int64_t c = 0;
            for (int v = 0; v < 8; v++) c += hist[b * 8 + v];
            if (c) { double q = (double)c / n; ent -= q * log2(q); }
        }
        o[4] = (float)ent;
    }
}

/* ------------------------------------------------------------------ thumbnail pairs (similar._pair_corr) */
/* The correlation of thumbnails (rows of n uint8 values of table) of each pair (a, b): rows index[a] and
   index[b] (index: which table rows are the images the pairs number). */
void pair_corr(const uint8_t *table, int64_t n, const int64_t *index, int64_t count, const int64_t *pairs,
               int64_t p, float *out) {
    double *mean = malloc(sizeof(double) * (size_t)count * 2), *inv = mean + count;
    uint8_t *seen = calloc((size_t)count, 1);
    if (!mean || !seen) { free(mean); free(seen); return; }
    for (int64_t k = 0; k < p; k++)
        for (int e = 0; e < 2; e++) {
            int64_t i = pairs[2 * k + e];
            if (seen[i]) continue;
            seen[i] = 1;
            const uint8_t *t = table + index[i] * n;
            int64_t s1 = 0, s2 = 0;
            for (int64_t j = 0; j < n; j++) { s1 += t[j]; s2 += (int64_t)t[j] * t[j]; }
            mean[i] = (double)s1 / (double)n;
            double norm = sqrt(fmax((double)s2 - (double)n * mean[i] * mean[i], 0));
            inv[i] = norm > 1e-3 ? 1 / norm : 0;
        }
    for (int64_t k = 0; k < p; k++) {
        int64_t a = pairs[2 * k], b = pairs[2 * k + 1];
        const uint8_t *ta = table + index[a] * n, *tb = table + index[b] * n;
        uint32_t dot = 0;
        for (int64_t j = 0; j < n; j++) dot += (uint32_t)ta[j] * tb[j];
        out[k] = (float)(((double)dot - (double)n * mean[a] * mean[b]) * inv[a] * inv[b]);
    }
    free(mean);
    free(seen);
}

/* ------------------------------------------------------------------ hash bands (similar.band_pairs) */
/* Pairs (i < j) of the n hashes whose 16-bit band `band` is equal and which differ in at most near_bits bits,
   bucket by bucket in the order of the band's value, at most budget of them (*stopped = 1: there were more). Writes up to cap pairs to out (2 per pair) and returns how many it found (more than cap:
   call again with room for them). */
int64_t band_pairs(const uint64_t *hashes, int64_t n, int band, int near_bits, int64_t budget, int64_t *out,
                   int64_t cap, int32_t *stopped) {
    int64_t *start = calloc(65537, sizeof(int64_t)), *order = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    int64_t found = 0;
    *stopped = 0;
    if (!start || !order) { free(start); free(order); return -1; }
    for (int64_t i = 0; i < n; i++) start[((hashes[i] >> (16 * band)) & 0xFFFF) + 1]++;
    for (int k = 0; k < 65536; k++) start[k + 1] += start[k];
    int64_t *fill = malloc(sizeof(int64_t) * 65536);
    if (!fill) { free(start); free(order); return -1; }
    memcpy(fill, start, sizeof(int64_t) * 65536);
    for (int64_t i = 0; i < n; i++) order[fill[(hashes[i] >> (16 * band)) & 0xFFFF]++] = i;  /* stable */
    free(fill);
    for (int k = 0; k < 65536 && !*stopped; k++)
        for (int64_t a = start[k]; a < start[k + 1] && !*stopped; a++) {
            uint64_t ha = hashes[order[a]];
            for (int64_t b = a + 1; b < start[k + 1]; b++)
                if (__builtin_popcountll(ha ^ hashes[order[b]]) <= near_bits) {
                    if (found == budget) { *stopped = 1; break; }  /* one more than the budget: stop */
                    if (found < cap) { out[2 * found] = order[a]; out[2 * found + 1] = order[b]; }
                    found++;
                }
        }
    free(start);
    free(order);
    return found;
}

/* ------------------------------------------------------------------ the strict copy test (similar.copy_similarity) */
typedef struct { double cy, cx, r; } Moments;

/* The content's centre and radius (in the original file's pixels: pitch py, px) of c (h x w), where mask
   (NULL: everywhere): what is beyond a noise floor (a tenth of the largest magnitude, at least 4) from 0. */
static Moments moments(const double *c, const uint8_t *mask, int64_t h, int64_t w, double py, double px, double *wy,
                       double *wx) {
    double top = 0;
    for (int64_t k = 0; k < h * w; k++) {
        double v = (!mask || mask[k]) ? fabs(c[k]) : 0;
        top = v > top ? v : top;
    }
    double floor_ = fmax(4.0, 0.1 * top);
    memset(wx, 0, sizeof(double) * w);
    for (int64_t y = 0; y < h; y++) {
        const double *row = c + y * w;
        const uint8_t *mrow = mask ? mask + y * w : NULL;
        double sum = 0;
        for (int64_t x = 0; x < w; x++) {
            double v = fabs(row[x]) - floor_;
            v = (v > 0 && (!mrow || mrow[x])) ? v : 0;
            sum += v;
            wx[x] += v;
        }
        wy[y] = sum;
    }
    Spread sp = spread_of(wy, wx, h, w);
    Moments m = {sp.cy, sp.cx, sqrt(sp.vy * py * py + sp.vx * px * px)};
    return m;
}

/* Linear taps: destination pixel d samples the source (n px) at src + (d - dst) * k; taps outside dropped. */
static void taps(int64_t n, double src, double dst, double k, int64_t *i0, double *w0, double *w1) {
    for (int64_t d = 0; d < n; d++) {
        double coord = src + ((double)d - dst) * k, f;
        int64_t x0 = (int64_t)floor(coord);
        f = coord - (double)x0;
        i0[d] = x0;
        w0[d] = (x0 >= 0 && x0 < n) ? 1 - f : 0;
        w1[d] = (x0 + 1 >= 0 && x0 + 1 < n) ? f : 0;
    }
}

/* c (h x w) resampled so that its point (sy, sx) lands on (dy, dx), (ky, kx) of its pixels per new pixel; and
   where the result lies inside c. */
static void warp(const double *c, int64_t h, int64_t w, double sy, double sx, double dy, double dx, double ky,
                 double kx, double *out, uint8_t *mask, int64_t *iy, double *ay, double *by, int64_t *ix, double *ax,
                 double *bx) {
    taps(h, sy, dy, ky, iy, ay, by);
    taps(w, sx, dx, kx, ix, ax, bx);
    for (int64_t j = 0; j < w; j++) ix[w + j] = ix[j] + 1 < w ? (ix[j] + 1 < 0 ? 0 : ix[j] + 1) : w - 1;
    for (int64_t j = 0; j < w; j++) ix[j] = ix[j] < 0 ? 0 : (ix[j] >= w ? w - 1 : ix[j]);  /* a dropped tap: weight 0 */
    for (int64_t i = 0; i < h; i++) {
        int64_t y0 = iy[i] < 0 ? 0 : (iy[i] >= h ? h - 1 : iy[i]), y1 = iy[i] + 1 < 0 ? 0 : (iy[i] + 1 >= h ? h - 1 : iy[i] + 1);
        const double *r0 = c + y0 * w, *r1 = c + y1 * w;
        double wy0 = ay[i], wy1 = by[i], sy_ = wy0 + wy1;
        for (int64_t j = 0; j < w; j++) {
            int64_t x0 = ix[j], x1 = ix[w + j];
            out[i * w + j] = wy0 * (ax[j] * r0[x0] + bx[j] * r0[x1]) + wy1 * (ax[j] * r1[x0] + bx[j] * r1[x1]);
            mask[i * w + j] = sy_ * (ax[j] + bx[j]) > 0.999;
        }
    }
}

/* A prepared image x (h x w, in [0, 1]) as signed content: levels less the border's median, negated when its
   content is dark on a lighter border. */
static void signed_content(const float *x, int64_t h, int64_t w, double *c, double *border) {
    int64_t nb = 0;
    double sum = 0;
    for (int64_t k = 0; k < h * w; k++) { c[k] = (double)(x[k] * 255.0f); sum += c[k]; }
    for (int64_t j = 0; j < w; j++) { border[nb++] = c[j]; border[nb++] = c[(h - 1) * w + j]; }
    for (int64_t i = 1; i < h - 1; i++) { border[nb++] = c[i * w]; border[nb++] = c[i * w + w - 1]; }
    double hi = select_kth(border, nb, nb / 2), level = hi;
    if (nb % 2 == 0) {  /* the mean of the two middle values; the lower one is the largest below the upper */
        double lo = border[0];
        for (int64_t k = 0; k < nb / 2; k++) lo = fmax(lo, border[k]);
        level = (lo + hi) / 2;
    }
    level = (double)(float)level;
    double sign = sum / (double)(h * w) < level - 4 ? -1 : 1;
    for (int64_t k = 0; k < h * w; k++) c[k] = (c[k] - level) * sign;
}

static double masked_corr(const double *a, const double *b, const uint8_t *m, int64_t n) {
    double cnt = 0, sa = 0, sb = 0;
    for (int64_t k = 0; k < n; k++)
        if (m[k]) { cnt += 1; sa += a[k]; sb += b[k]; }
    cnt = fmax(cnt, 1);
    double ma = sa / cnt, mb = sb / cnt, saa = 0, sbb = 0, sab = 0;
    for (int64_t k = 0; k < n; k++)
        if (m[k]) {
            double da = a[k] - ma, db = b[k] - mb;
            saa += da * da; sbb += db * db; sab += da * db;
        }
    double den = sqrt(saa * sbb);
    return den > 0 ? sab / fmax(den, 1e-12) : 0.0;
}

/* copy_similarity of pairs of prepared images (h x w each) without its blur sweep (for files of the same size):
   pair j is images j of xa and of xb, with pitches pa[j], pb[j] (2 each: down, across). */
void copy_corr(const float *xa, const float *xb, int64_t h, int64_t w, const double *pa, const double *pb, int64_t p,
               float *out) {
    int64_t n = h * w, side = h > w ? h : w;
    double *buf = malloc(sizeof(double) * (size_t)(4 * n + 2 * (h + w) + 2 * side + 4 * side));
    uint8_t *mask = malloc((size_t)n);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)(3 * side));
    if (!buf || !mask || !idx) { free(buf); free(mask); free(idx); return; }
    double *ca = buf, *cb = ca + n, *wa = cb + n, *tmp = wa + n, *wy = tmp + n, *wx = wy + h, *border = wx + w,
           *t = border + 2 * (h + w);
    for (int64_t j = 0; j < p; j++) {
        const double *qa = pa + 2 * j, *qb = pb + 2 * j;
        const float *ia = xa + j * n, *ib = xb + j * n;
        if ((qb[0] + qb[1]) / 2 < (qa[0] + qa[1]) / 2) {  /* onto the one resampled the most */
            const double *q = qa; qa = qb; qb = q;
            const float *i = ia; ia = ib; ib = i;
        }
        signed_content(ia, h, w, ca, border);
        signed_content(ib, h, w, cb, border);
        Moments ma = moments(ca, NULL, h, w, qa[0], qa[1], wy, wx), mb = moments(cb, NULL, h, w, qb[0], qb[1], wy, wx);
        double ky = mb.r / ma.r * qa[0] / qb[0], kx = mb.r / ma.r * qa[1] / qb[1];
        warp(cb, h, w, mb.cy, mb.cx, ma.cy, ma.cx, ky, kx, wa, mask, idx, t, t + side, idx + side, t + 2 * side,
             t + 3 * side);
        Moments m1 = moments(wa, mask, h, w, qa[0], qa[1], wy, wx), m2 = moments(ca, mask, h, w, qa[0], qa[1], wy, wx);
        double sy = mb.cy + ky * (m1.cy - ma.cy), sx = mb.cx + kx * (m1.cx - ma.cx);
        ky *= m1.r / m2.r;
        kx *= m1.r / m2.r;
        warp(cb, h, w, sy, sx, m2.cy, m2.cx, ky, kx, wa, mask, idx, t, t + side, idx + side, t + 2 * side,
             t + 3 * side);
        out[j] = (float)masked_corr(ca, wa, mask, n);
    }
    free(buf);
    free(mask);
    free(idx);
}
