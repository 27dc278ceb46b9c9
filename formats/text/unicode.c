/* UTF-8 helpers and NFC normalization with Unicode 9.0 data (formats/text/unicode.h). NFC = full
 * canonical decomposition, canonical ordering, canonical composition (UAX #15), with Hangul
 * handled algorithmically. */
#include "formats/text/unicode.h"

#include <string.h>

#include "lms/alloc.h"

size_t lms__utf8_encode(uint32_t cp, unsigned char *dst)
{
    if (cp < 0x80) {
        dst[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (unsigned char)(0xC0 | (cp >> 6));
        dst[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (unsigned char)(0xE0 | (cp >> 12));
        dst[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (unsigned char)(0xF0 | (cp >> 18));
    dst[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t lms__utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = lms__utf8_decode(s + i, n - i, &cp);
        if (!k)
            return i;
        i += k;
    }
    return n;
}

bool lms__nfc_quick(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = lms__utf8_decode(s + i, n - i, &cp);
        if (!k || (lms__uc_flags(cp) & LMS_UC_QC))
            return false;
        i += k;
    }
    return true;
}

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19,
       VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static long find_dec(uint32_t cp)
{
    size_t lo = 0, hi = lms__uc_n_dec;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (lms__uc_dec_cp[mid] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < lms__uc_n_dec && lms__uc_dec_cp[lo] == cp ? (long)lo : -1;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    uint64_t key = ((uint64_t)a << 21) | b;
    size_t lo = 0, hi = lms__uc_n_comp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (lms__uc_comp_key[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < lms__uc_n_comp && lms__uc_comp_key[lo] == key ? lms__uc_comp_val[lo] : 0;
}

struct cpbuf {
    uint32_t *v;
    size_t n, cap;
};

static bool push(struct cpbuf *b, uint32_t cp)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *p = lms_realloc(b->v, cap * sizeof(uint32_t));
        if (!p)
            return false;
        b->v = p;
        b->cap = cap;
    }
    b->v[b->n++] = cp;
    return true;
}

static bool decompose(struct cpbuf *b, uint32_t cp, int depth)
{
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE, t = s % TCOUNT;
        if (!push(b, LBASE + s / NCOUNT) || !push(b, VBASE + (s % NCOUNT) / TCOUNT))
            return false;
        return t ? push(b, TBASE + t) : true;
    }
    long i = (cp >= 0xC0 && depth < 8) ? find_dec(cp) : -1;
    if (i < 0)
        return push(b, cp);
    if (!decompose(b, lms__uc_dec_map[2 * i], depth + 1))
        return false;
    uint32_t second = lms__uc_dec_map[2 * i + 1];
    return second ? decompose(b, second, depth + 1) : true;
}

enum lms_status lms__nfc(const unsigned char *s, size_t n, unsigned char **dst, size_t *dst_len,
                         size_t *dst_cap, struct lms_error *err)
{
    struct cpbuf b = {0};
    enum lms_status st = LMS_OK;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = lms__utf8_decode(s + i, n - i, &cp);
        if (!k) {
            st = lms_error_set(err, LMS_EFORMAT, "invalid UTF-8 at byte %zu", i);
            goto out;
        }
        i += k;
        if (!decompose(&b, cp, 0))
            goto oom;
    }
    /* canonical ordering: stable sort of each run of non-starters by combining class */
    for (size_t i = 1; i < b.n; i++) {
        unsigned c = lms__uc_ccc(b.v[i]);
        if (!c)
            continue;
        size_t j = i;
        uint32_t cp = b.v[i];
        while (j > 0) {
            unsigned p = lms__uc_ccc(b.v[j - 1]);
            if (p <= c)
                break;
            b.v[j] = b.v[j - 1];
            j--;
        }
        b.v[j] = cp;
    }
    /* canonical composition (UAX #15 reference algorithm) */
    if (b.n) {
        size_t starter = 0, out_n = 1;
        unsigned last = lms__uc_ccc(b.v[0]);
        bool have_starter = last == 0;
        if (last)
            last = 256;
        for (size_t i = 1; i < b.n; i++) {
            uint32_t ch = b.v[i];
            unsigned c = lms__uc_ccc(ch);
            if (have_starter && (last < c || last == 0)) {
                uint32_t comp = compose_pair(b.v[starter], ch);
                if (comp) {
                    b.v[starter] = comp;
                    continue;
                }
            }
            if (c == 0) {
                starter = out_n;
                have_starter = true;
            }
            last = c;
            b.v[out_n++] = ch;
        }
        b.n = out_n;
    }
    if (*dst_cap - *dst_len < 4 * b.n) {
        size_t cap = *dst_len + 4 * b.n + 64;
        unsigned char *p = lms_realloc(*dst, cap);
        if (!p)
            goto oom;
        *dst = p;
        *dst_cap = cap;
    }
    for (size_t i = 0; i < b.n; i++)
        *dst_len += lms__utf8_encode(b.v[i], *dst + *dst_len);
    goto out;
oom:
    st = lms_error_set(err, LMS_ENOMEM, "normalizing text: out of memory");
out:
    lms_free(b.v);
    return st;
}
