/* Indexed datasets: the writer's .idx bytes equal the layout of include/lms/dataset.h built by
 * hand here; the reader returns what was written, rejects each defect with a message naming it;
 * the raw id reader sees fixtures/corpus/val.ids.u16; the split matches megatron-core's
 * _get_split_indices arithmetic; the sampler is deterministic and covers the data; the data
 * fingerprint of an open dataset equals its path's, over the bytes include/lms/dataset.h lists. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/datasets/dataset_impl.h"
#include "lms/alloc.h"
#include "lms/dataset.h"
#include "lms/hash.h"

static char tmpdir[256];

static void make_tmp(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lms-test-dataset-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmp(void)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static size_t read_file(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void put(unsigned char **p, const void *v, size_t n)
{
    memcpy(*p, v, n);
    *p += n;
}

/* Documents {1,2,3}, {}, {70000? no: 4,5 | 6} (two sequences), written as uint16. */
START_TEST(write_read_roundtrip)
{
    make_tmp();
    char prefix[300], path[320];
    snprintf(prefix, sizeof(prefix), "%s/ds", tmpdir);
    struct lms_dataset_writer *w;
    struct lms_error err = {0};
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_U16, false, &w, &err), LMS_OK);
    int32_t a[] = {1, 2, 3}, b[] = {4, 5}, c[] = {65535};
    ck_assert_int_eq(lms_dataset_writer_add(w, a, 3, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK); /* empty document */
    ck_assert_int_eq(lms_dataset_writer_add(w, b, 2, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_writer_add(w, c, 1, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
    int32_t too_big = 65536;
    ck_assert_int_eq(lms_dataset_writer_add(w, &too_big, 1, &err), LMS_EINVAL);
    ck_assert_int_eq(lms_dataset_writer_finish(w, &err), LMS_OK);
    lms_dataset_writer_free(w);

    /* by hand: S = 3 sequences (3, 2, 1 tokens), D = 4 */
    unsigned char want[128], *p = want;
    uint64_t ver = 1, S = 3, D = 4;
    int32_t len[3] = {3, 2, 1};
    int64_t ptr[3] = {0, 6, 10}, doc[4] = {0, 1, 1, 3};
    put(&p, "MMIDIDX\0\0", 9);
    put(&p, &ver, 8);
    *p++ = 8;
    put(&p, &S, 8);
    put(&p, &D, 8);
    put(&p, len, sizeof(len));
    put(&p, ptr, sizeof(ptr));
    put(&p, doc, sizeof(doc));
    unsigned char got[256];
    snprintf(path, sizeof(path), "%s.idx", prefix);
    ck_assert_uint_eq(read_file(path, got, sizeof(got)), (size_t)(p - want));
    ck_assert(memcmp(got, want, (size_t)(p - want)) == 0);
    uint16_t bin_want[6] = {1, 2, 3, 4, 5, 65535};
    snprintf(path, sizeof(path), "%s.bin", prefix);
    ck_assert_uint_eq(read_file(path, got, sizeof(got)), 12);
    ck_assert(memcmp(got, bin_want, 12) == 0);

    struct lms_dataset *ds;
    ck_assert_msg(lms_dataset_open(prefix, &ds, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_dataset_n_docs(ds), 3);
    ck_assert_int_eq(lms_dataset_n_sequences(ds), 3);
    ck_assert_int_eq(lms_dataset_n_tokens(ds), 6);
    int64_t b0, e0;
    ck_assert(lms_dataset_doc_range(ds, 1, &b0, &e0));
    ck_assert_int_eq(b0, 3);
    ck_assert_int_eq(e0, 3);
    ck_assert(lms_dataset_doc_range(ds, 2, &b0, &e0));
    ck_assert_int_eq(b0, 3);
    ck_assert_int_eq(e0, 6);
    ck_assert(!lms_dataset_doc_range(ds, 3, &b0, &e0));
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(lms_dataset_read_doc(ds, 2, &ids, &n, &err), LMS_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], 4);
    ck_assert_int_eq(ids[2], 65535);
    lms_free(ids);
    int32_t buf[6];
    ck_assert_int_eq(lms_dataset_read(ds, 0, 7, buf, 6, &err), LMS_EINVAL);
    lms_dataset_free(ds);

    /* refusing to overwrite, then replacing with force */
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_I32, false, &w, &err), LMS_EEXIST);
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_I32, true, &w, &err), LMS_OK);
    lms_dataset_writer_free(w); /* unfinished: the old files stay */
    ck_assert_int_eq(lms_dataset_open(prefix, &ds, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_dtype(ds), LMS_INDEX_U16);
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* A valid image of one sequence of 2 int32 tokens; each test breaks one field. */
static size_t good_idx(unsigned char *img)
{
    unsigned char *p = img;
    uint64_t ver = 1, S = 1, D = 2;
    int32_t len = 2;
    int64_t ptr = 0, doc[2] = {0, 1};
    put(&p, "MMIDIDX\0\0", 9);
    put(&p, &ver, 8);
    *p++ = 4;
    put(&p, &S, 8);
    put(&p, &D, 8);
    put(&p, &len, 4);
    put(&p, &ptr, 8);
    put(&p, doc, 16);
    return (size_t)(p - img);
}

static void expect_bad(const unsigned char *img, size_t n, uint64_t bin_len, const char *what)
{
    struct lms__idx idx;
    struct lms_error err = {0};
    ck_assert_int_ne(lms__idx_parse(img, n, bin_len, &idx, &err), LMS_OK);
    ck_assert_msg(strstr(err.msg, what) != NULL, "'%s' not in: %s", what, err.msg);
}

START_TEST(idx_validation)
{
    unsigned char img[128];
    size_t n = good_idx(img);
    struct lms__idx idx;
    ck_assert_int_eq(lms__idx_parse(img, n, 8, &idx, NULL), LMS_OK);
    expect_bad(img, 20, 8, "truncated header");
    expect_bad(img, n - 1, 8, "truncated");
    expect_bad(img, n, 12, ".bin has 12 bytes");
    expect_bad(img, n, 4, "past the end of .bin");
    img[0] = 'X';
    expect_bad(img, n, 8, "bad magic");
    n = good_idx(img);
    img[9] = 2;
    expect_bad(img, n, 8, "version 2");
    n = good_idx(img);
    img[17] = 7;
    expect_bad(img, n, 8, "dtype code 7");
    n = good_idx(img);
    img[18] = 0xFF, img[25] = 0x7F; /* huge S */
    expect_bad(img, n, 8, "impossibly large");
    n = good_idx(img);
    img[38] = 1; /* pointer 1 */
    expect_bad(img, n, 8, "pointer 1");
    n = good_idx(img);
    img[34] = 0xFF, img[35] = 0xFF, img[36] = 0xFF, img[37] = 0xFF; /* length -1 */
    expect_bad(img, n, 8, "negative length");
    n = good_idx(img);
    img[54] = 2; /* doc_idx[1] = 2 > S */
    expect_bad(img, n, 8, "document index entry 1");
    n = good_idx(img);
    img[54] = 0; /* doc_idx ends at 0 != S */
    expect_bad(img, n, 8, "ends at 0");
}
END_TEST

START_TEST(raw_ids)
{
    char p[4096];
    struct lms_dataset *ds;
    struct lms_error err = {0};
    ck_assert_int_eq(lms_dataset_open_raw(fixture_path("corpus/val.ids.u16", p, sizeof(p)),
                                          LMS_INDEX_U16, &ds, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_n_tokens(ds), 937301);
    ck_assert_int_eq(lms_dataset_n_docs(ds), 1);
    int32_t last;
    ck_assert_int_eq(lms_dataset_read(ds, 937300, 937301, &last, 1, &err), LMS_OK);
    ck_assert_int_eq(last, 0); /* <|endoftext|> ends the last document */
    lms_dataset_free(ds);
    ck_assert_int_eq(lms_dataset_open_raw(fixture_path("corpus/val.jsonl", p, sizeof(p)),
                                          LMS_INDEX_I64, &ds, &err) == LMS_OK ||
                         err.status == LMS_EFORMAT, 1);
}
END_TEST

/* An open dataset's fingerprint is its path's (lms_data_fingerprint, checked against xxHash in
 * test_fingerprint.c); an indexed dataset's covers its .idx, byte for byte. */
START_TEST(fingerprint)
{
    char hex[LMS_HASH64_HEX], by_path[LMS_HASH64_HEX];
    char p[4096];
    struct lms_dataset *ds;
    struct lms_error err = {0};
    ck_assert_int_eq(lms_dataset_open_raw(fixture_path("corpus/val.ids.u16", p, sizeof(p)),
                                          LMS_INDEX_U16, &ds, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_fingerprint(ds, hex, &err), LMS_OK);
    lms_dataset_free(ds);
    ck_assert_int_eq(lms_data_fingerprint(p, by_path, &err), LMS_OK);
    ck_assert_str_eq(hex, by_path); /* 1874602 bytes: both ends are 1 MiB */

    /* two datasets of the same tokens in different documents: the same .bin, another .idx */
    make_tmp();
    char prefix[300], other[300], a[LMS_HASH64_HEX], b[LMS_HASH64_HEX];
    snprintf(prefix, sizeof prefix, "%s/f", tmpdir);
    snprintf(other, sizeof other, "%s/g", tmpdir);
    const int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    for (int k = 0; k < 2; k++) {
        struct lms_dataset_writer *w;
        ck_assert_int_eq(lms_dataset_writer_new(k ? other : prefix, LMS_INDEX_U16, false, &w,
                                                &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_add(w, ids, 3 + (size_t)k, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_add(w, ids + 3 + k, 3 - (size_t)k, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_finish(w, &err), LMS_OK);
        lms_dataset_writer_free(w);
    }
    unsigned char idx[512], bin[64];
    char path[320];
    snprintf(path, sizeof path, "%s.idx", prefix);
    size_t n_idx = read_file(path, idx, sizeof idx);
    snprintf(path, sizeof path, "%s.bin", prefix);
    size_t n_bin = read_file(path, bin, sizeof bin);
    ck_assert_uint_eq(n_bin, 12);
    struct lms_hash64 h;
    lms_hash64_init(&h, 0);
    lms_hash64_update_u64(&h, n_idx);
    lms_hash64_update(&h, idx, n_idx);
    lms_hash64_update_u64(&h, n_bin);
    lms_hash64_update(&h, bin, n_bin); /* under 1 MiB: the head and the tail are the file */
    lms_hash64_update(&h, bin, n_bin);
    char want[LMS_HASH64_HEX];
    lms_hash64_hex(lms_hash64_digest(&h), want);
    ck_assert_int_eq(lms_dataset_open(prefix, &ds, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_fingerprint(ds, a, &err), LMS_OK);
    lms_dataset_free(ds);
    ck_assert_str_eq(a, want);
    ck_assert_int_eq(lms_dataset_open(other, &ds, &err), LMS_OK);
    ck_assert_int_eq(lms_dataset_fingerprint(ds, b, &err), LMS_OK);
    lms_dataset_free(ds);
    ck_assert_str_ne(a, b);
    snprintf(path, sizeof path, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(path), 0);
}
END_TEST

/* megatron-core _get_split_indices: cumulative int(round(w/sum * n)), last pinned to n. */
START_TEST(split)
{
    int64_t b[3], e[3];
    ck_assert_int_eq(lms_split_parse("969,30,1", 1000, b, e, NULL), LMS_OK);
    ck_assert_int_eq(e[0], 969);
    ck_assert_int_eq(e[1], 999);
    ck_assert_int_eq(e[2], 1000);
    ck_assert_int_eq(lms_split_parse("1,1,1", 10, b, e, NULL), LMS_OK);
    ck_assert_int_eq(b[0], 0);
    ck_assert_int_eq(e[0], 4); /* [0,3,6,9] shifted by 9-10 */
    ck_assert_int_eq(e[1], 7);
    ck_assert_int_eq(e[2], 10);
    ck_assert_int_eq(lms_split_parse("98,2,0", 170, b, e, NULL), LMS_OK);
    ck_assert_int_eq(e[0], 167); /* round(166.6) */
    ck_assert_int_eq(b[1], 167);
    ck_assert_int_eq(e[1], 170);
    ck_assert_int_eq(b[2], 170);
    ck_assert_int_eq(lms_split_parse("1", 10, b, e, NULL), LMS_OK);
    ck_assert_int_eq(e[0], 10);
    ck_assert_int_eq(b[1], 10);
    ck_assert_int_eq(lms_split_parse("1,1", 5, b, e, NULL), LMS_OK);
    /* round(2.5) = 2 twice (half to even): [0,2,4,4] shifted by 4-5; half-up would give 2 */
    ck_assert_int_eq(e[0], 3);
    ck_assert_int_eq(e[1], 5);
    ck_assert_int_eq(lms_split_parse("", 5, b, e, NULL), LMS_EINVAL);
    ck_assert_int_eq(lms_split_parse("0,0", 5, b, e, NULL), LMS_EINVAL);
    ck_assert_int_eq(lms_split_parse("1,2,3,4", 5, b, e, NULL), LMS_EINVAL);
}
END_TEST

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

START_TEST(sampler)
{
    /* 5 documents of lengths 7, 0, 5, 9, 3 (24 tokens, ids 0..23 in stream order) */
    make_tmp();
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s/s", tmpdir);
    struct lms_dataset_writer *w;
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_I32, false, &w, NULL), LMS_OK);
    int lens[5] = {7, 0, 5, 9, 3}, next = 0;
    for (int d = 0; d < 5; d++) {
        int32_t ids[16];
        for (int i = 0; i < lens[d]; i++)
            ids[i] = next++;
        if (lens[d])
            ck_assert_int_eq(lms_dataset_writer_add(w, ids, (size_t)lens[d], NULL), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, NULL), LMS_OK);
    }
    ck_assert_int_eq(lms_dataset_writer_finish(w, NULL), LMS_OK);
    lms_dataset_writer_free(w);
    struct lms_dataset *ds;
    ck_assert_int_eq(lms_dataset_open(prefix, &ds, NULL), LMS_OK);

    /* unshuffled: window k is stream [4k, 4k+4), wrapping into a second epoch */
    struct lms_sampler_opts o = {.n_windows = 7, .seq_len = 4};
    struct lms_sampler *s;
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    int32_t win[4];
    for (int k = 0; k < 7; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, win, 4, NULL), LMS_OK);
        for (int i = 0; i < 4; i++)
            ck_assert_int_eq(win[i], (4 * k + i) % 24);
    }
    lms_sampler_free(s);

    /* shuffled, exactly one epoch: a permutation of the tokens; same seed, same windows */
    o = (struct lms_sampler_opts){.n_windows = 6, .seq_len = 4, .seed = 42, .shuffle_docs = true,
                                  .shuffle_windows = true};
    struct lms_sampler *s2;
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s2, NULL), LMS_OK);
    int32_t all[24], again[4];
    for (int k = 0; k < 6; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, all + 4 * k, 4, NULL), LMS_OK);
        ck_assert_int_eq(lms_sampler_window(s2, k, again, 4, NULL), LMS_OK);
        ck_assert(memcmp(all + 4 * k, again, sizeof(again)) == 0);
    }
    qsort(all, 24, sizeof(int32_t), cmp_i32);
    for (int i = 0; i < 24; i++)
        ck_assert_int_eq(all[i], i);
    lms_sampler_free(s);
    lms_sampler_free(s2);

    /* documents [2, 4) only: tokens 7..20 */
    o = (struct lms_sampler_opts){.n_windows = 3, .seq_len = 4, .seed = 1, .doc_begin = 2,
                                  .doc_end = 4, .shuffle_docs = true};
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, win, 4, NULL), LMS_OK);
        for (int i = 0; i < 4; i++)
            ck_assert(win[i] >= 7 && win[i] < 21);
    }
    ck_assert_int_eq(lms_sampler_window(s, 3, win, 4, NULL), LMS_EINVAL);
    lms_sampler_free(s);
    o.doc_begin = 1, o.doc_end = 2; /* only the empty document */
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_EINVAL);
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* Writes documents of the given lengths as int32 ids equal to their stream positions, so a
 * window's ids say where it was read. */
static struct lms_dataset *positions_dataset(const char *name, const int *lens, int n_docs)
{
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s/%s", tmpdir, name);
    struct lms_dataset_writer *w;
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_I32, true, &w, NULL), LMS_OK);
    int32_t next = 0;
    for (int d = 0; d < n_docs; d++) {
        int32_t *ids = lms_malloc((size_t)(lens[d] + 1) * sizeof(int32_t));
        for (int i = 0; i < lens[d]; i++)
            ids[i] = next++;
        if (lens[d])
            ck_assert_int_eq(lms_dataset_writer_add(w, ids, (size_t)lens[d], NULL), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, NULL), LMS_OK);
        lms_free(ids);
    }
    ck_assert_int_eq(lms_dataset_writer_finish(w, NULL), LMS_OK);
    lms_dataset_writer_free(w);
    struct lms_dataset *ds;
    ck_assert_int_eq(lms_dataset_open(prefix, &ds, NULL), LMS_OK);
    return ds;
}

/* Document holding stream position p. */
static int64_t doc_of(const struct lms_dataset *ds, int64_t p)
{
    int64_t lo = 0, hi = lms_dataset_n_docs(ds) - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2, b, e;
        lms_dataset_doc_range(ds, mid, &b, &e);
        if (b <= p)
            lo = mid;
        else
            hi = mid - 1;
    }
    int64_t b, e;
    lms_dataset_doc_range(ds, lo, &b, &e);
    while (e <= p) { /* past empty documents */
        lo++;
        lms_dataset_doc_range(ds, lo, &b, &e);
    }
    return lo;
}

/* Asserts that the first n rows of a sampler are spread over the whole corpus, as Megatron's
 * shuffle over every sample of the epoch spreads them: no document holds the start of more rows
 * than its share plus 2, every eighth of the stream holds row starts, and nearly every row comes
 * from its own document. */
static void assert_spread(const struct lms_dataset *ds, const struct lms_sampler *s, int n)
{
    int64_t n_docs = lms_dataset_n_docs(ds), T = lms_dataset_n_tokens(ds);
    int64_t len = lms_sampler_seq_len(s);
    int *rows_of = lms_calloc((size_t)n_docs, sizeof(int));
    int32_t *win = lms_malloc((size_t)len * sizeof(int32_t));
    int per_eighth[8] = {0}, distinct = 0;
    for (int k = 0; k < n; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, win, (size_t)len, NULL), LMS_OK);
        int64_t d = doc_of(ds, win[0]);
        distinct += rows_of[d]++ == 0;
        per_eighth[win[0] * 8 / T]++;
    }
    for (int64_t d = 0; d < n_docs; d++) {
        int64_t b, e;
        lms_dataset_doc_range(ds, d, &b, &e);
        double share = (double)n * (double)(e - b) / (double)T;
        ck_assert_msg(rows_of[d] <= share + 2, "document %lld: %d rows, share %.2f",
                      (long long)d, rows_of[d], share);
    }
    for (int i = 0; i < 8; i++)
        ck_assert_msg(per_eighth[i] > 0, "no row starts in eighth %d of the stream", i);
    ck_assert_int_ge(distinct, n - 4);
    lms_free(rows_of);
    lms_free(win);
}

/* 1000 documents of 400 to 1200 tokens. */
static struct lms_dataset *many_docs_dataset(void)
{
    enum { DOCS = 1000 };
    int *lens = lms_malloc(DOCS * sizeof(int));
    for (int d = 0; d < DOCS; d++)
        lens[d] = 400 + (int)((d * 7919L) % 801);
    struct lms_dataset *ds = positions_dataset("many", lens, DOCS);
    lms_free(lens);
    return ds;
}

/* A short distillation run: 3 steps of 16 rows of 256 + 1 tokens. The old sampler read 48
 * consecutive windows of the document-shuffled stream: a few rows from each of about 16
 * documents. */
START_TEST(short_run_covers_corpus)
{
    make_tmp();
    struct lms_dataset *ds = many_docs_dataset();
    struct lms_sampler_opts o = {.n_windows = 48, .seq_len = 257, .stride = 256, .seed = 1234,
                                 .shuffle_docs = true, .shuffle_windows = true};
    struct lms_sampler *s;
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    assert_spread(ds, s, 48);
    lms_sampler_free(s);
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* Calibration (score, prune --data-paths) reads its first rows from the same sampler: 48 rows of
 * 256 tokens are spread the same way; in order they are the stream's first windows. */
START_TEST(calibration_rows_cover_corpus)
{
    make_tmp();
    struct lms_dataset *ds = many_docs_dataset();
    struct lms_sampler *s;
    ck_assert_int_eq(lms_sampler_new_calibration(ds, 256, 1234, true, &s, NULL), LMS_OK);
    ck_assert_int_eq(lms_sampler_n_windows(s), lms_dataset_n_tokens(ds) / 256);
    assert_spread(ds, s, 48);
    lms_sampler_free(s);
    ck_assert_int_eq(lms_sampler_new_calibration(ds, 256, 1234, false, &s, NULL), LMS_OK);
    int32_t win[256];
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, win, 256, NULL), LMS_OK);
        ck_assert_int_eq(win[0], 256 * k);
        ck_assert_int_eq(win[255], 256 * k + 255);
    }
    lms_sampler_free(s);
    ck_assert_int_eq(lms_sampler_new_calibration(ds, lms_dataset_n_tokens(ds) + 1, 1, true, &s,
                                                 NULL), LMS_EINVAL);
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* Megatron's separate final epoch: 7 windows of 4 tokens over 24 tokens need a second epoch, of
 * which only 1 of its 6 windows is used (< 80 %): the first 6 rows are then exactly the first
 * epoch (every token once), and the seventh comes from the second. */
START_TEST(separate_final_epoch)
{
    make_tmp();
    int lens[5] = {7, 0, 5, 9, 3};
    struct lms_dataset *ds = positions_dataset("five", lens, 5);
    for (uint64_t seed = 1; seed <= 20; seed++) {
        struct lms_sampler_opts o = {.n_windows = 7, .seq_len = 4, .seed = seed,
                                     .shuffle_docs = true, .shuffle_windows = true};
        struct lms_sampler *s;
        ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
        int32_t all[28];
        for (int k = 0; k < 7; k++)
            ck_assert_int_eq(lms_sampler_window(s, k, all + 4 * k, 4, NULL), LMS_OK);
        qsort(all, 24, sizeof(int32_t), cmp_i32);
        for (int i = 0; i < 24; i++)
            ck_assert_msg(all[i] == i, "seed %llu: the first 6 rows are not the first epoch",
                          (unsigned long long)seed);
        lms_sampler_free(s);
    }
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* A .bin truncated while the dataset is open gives an I/O error naming the file, not SIGBUS. */
START_TEST(bin_truncated_while_open)
{
    make_tmp();
    int lens[3] = {3000, 3000, 3000};
    struct lms_dataset *ds = positions_dataset("cut", lens, 3);
    char bin[320];
    snprintf(bin, sizeof(bin), "%s/cut.bin", tmpdir);
    ck_assert_int_eq(truncate(bin, 4 * 1000), 0);
    int32_t buf[100];
    struct lms_error err = {0};
    ck_assert_int_eq(lms_dataset_read(ds, 10, 20, buf, 100, &err), LMS_OK);
    ck_assert_int_eq(buf[0], 10);
    ck_assert_int_eq(lms_dataset_read(ds, 8000, 8100, buf, 100, &err), LMS_EIO);
    ck_assert_msg(strstr(err.msg, bin) && strstr(err.msg, "truncated"), "%s", err.msg);
    lms_dataset_free(ds);
    remove_tmp();
}
END_TEST

/* ---- the row order against the golden file ---------------------------------------------- */

/* tests/golden/sampler_order.txt, written by tests/tools/sampler_reference.py (an independent
 * Python version of README "Row order"; test_sampler_order.sh checks that it still writes this
 * file): the document lengths of a dataset whose ids are stream positions, then cases of
 * options, each with the plan and the ids of every row. */
struct golden_case {
    char name[64];
    long long begin, end, rows, len, stride, seed, epochs, samples;
    int shuffle, separate;
    int32_t *ids; /* rows x len */
};

struct golden {
    int lens[64], n_lens;
    struct golden_case cases[16];
    int n_cases;
};

static void golden_load(struct golden *g)
{
    char path[4096];
    const char *root = getenv("LMS_SOURCE_ROOT");
    snprintf(path, sizeof path, "%s/tests/golden/sampler_order.txt", root ? root : ".");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    memset(g, 0, sizeof *g);
    static char line[65536];
    struct golden_case *c = NULL;
    long long row = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = line, *end;
        if (!strncmp(line, "lengths ", 8)) {
            p += 8;
            for (long v; (v = strtol(p, &end, 10)), end != p; p = end)
                g->lens[g->n_lens++] = (int)v;
        } else if (!strncmp(line, "case ", 5)) {
            ck_assert_int_lt(g->n_cases, 16);
            c = &g->cases[g->n_cases++];
            ck_assert_int_eq(sscanf(line, "case %63s docs %lld %lld rows %lld length %lld stride "
                                    "%lld seed %lld shuffle %d epochs %lld samples %lld "
                                    "separate %d", c->name, &c->begin, &c->end, &c->rows,
                                    &c->len, &c->stride, &c->seed, &c->shuffle, &c->epochs,
                                    &c->samples, &c->separate), 11);
            c->ids = lms_malloc((size_t)(c->rows * c->len) * sizeof(int32_t));
            row = 0;
        } else if (!strncmp(line, "row ", 4)) {
            ck_assert(c && row < c->rows);
            p += 4;
            for (long long i = 0; i < c->len; i++, p = end) {
                c->ids[row * c->len + i] = (int32_t)strtol(p, &end, 10);
                ck_assert(end != p);
            }
            row++;
        }
    }
    fclose(f);
    ck_assert_int_gt(g->n_cases, 0);
}

static void golden_free(struct golden *g)
{
    for (int i = 0; i < g->n_cases; i++)
        lms_free(g->cases[i].ids);
}

static struct lms_sampler_opts golden_opts(const struct golden_case *c)
{
    return (struct lms_sampler_opts){.n_windows = c->rows, .seq_len = c->len,
                                     .stride = c->stride, .seed = (uint64_t)c->seed,
                                     .doc_begin = c->begin, .doc_end = c->end,
                                     .shuffle_docs = c->shuffle, .shuffle_windows = c->shuffle};
}

/* The sampler's plan and every row equal the case's. */
static void assert_golden_rows(const struct lms_sampler *s, const struct golden_case *c)
{
    struct lms_sampler_info info;
    lms_sampler_info(s, &info);
    ck_assert_msg(info.n_epochs == c->epochs && info.n_samples == c->samples &&
                  info.separate_final == (c->separate != 0),
                  "%s: epochs %lld samples %lld separate %d", c->name, (long long)info.n_epochs,
                  (long long)info.n_samples, info.separate_final);
    int32_t win[64];
    for (long long k = 0; k < c->rows; k++) {
        ck_assert_int_eq(lms_sampler_window(s, k, win, 64, NULL), LMS_OK);
        ck_assert_msg(memcmp(win, c->ids + k * c->len, (size_t)c->len * sizeof(int32_t)) == 0,
                      "%s: row %lld differs from the golden file", c->name, k);
    }
}

START_TEST(golden_row_order)
{
    make_tmp();
    struct golden g;
    golden_load(&g);
    struct lms_dataset *ds = positions_dataset("golden", g.lens, g.n_lens);
    for (int i = 0; i < g.n_cases; i++) {
        const struct golden_case *c = &g.cases[i];
        struct lms_sampler_opts o = golden_opts(c);
        struct lms_sampler *s;
        ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
        assert_golden_rows(s, c);
        lms_sampler_free(s);
        /* the same index through a cache file */
        o.memory_limit = 1;
        struct lms_error err = {0};
        ck_assert_msg(lms_sampler_new(ds, &o, &s, &err) == LMS_OK, "%s", err.msg);
        struct lms_sampler_info info;
        lms_sampler_info(s, &info);
        ck_assert(c->shuffle ? info.cache_path != NULL : info.cache_path == NULL);
        assert_golden_rows(s, c);
        lms_sampler_free(s);
        if (!strcmp(c->name, "calibration")) { /* score's and prune's rows */
            ck_assert_int_eq(lms_sampler_new_calibration(ds, c->len, (uint64_t)c->seed, true, &s,
                                                         NULL), LMS_OK);
            assert_golden_rows(s, c);
            lms_sampler_free(s);
        }
    }
    lms_dataset_free(ds);
    golden_free(&g);
    remove_tmp();
}
END_TEST

static ino_t inode_of(const char *path)
{
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    return sb.st_ino;
}

/* An index over the memory limit is built once into a cache file beside the data (the name
 * carries a hash of its inputs), reused while it checks out, rebuilt when damaged; when neither
 * the data's directory nor $TMPDIR can hold it, the sampler refuses with both reasons. */
START_TEST(index_cache)
{
    make_tmp();
    struct golden g;
    golden_load(&g);
    const struct golden_case *c = &g.cases[1]; /* two epochs */
    struct lms_dataset *ds = positions_dataset("golden", g.lens, g.n_lens);
    struct lms_sampler_opts o = golden_opts(c);
    o.memory_limit = 1;
    struct lms_sampler *s;
    struct lms_error err = {0};
    ck_assert_msg(lms_sampler_new(ds, &o, &s, &err) == LMS_OK, "%s", err.msg);
    struct lms_sampler_info info;
    lms_sampler_info(s, &info);
    char prefix[320], path[600];
    snprintf(prefix, sizeof prefix, "%s/golden.sampler-", tmpdir);
    ck_assert_msg(info.cache_path && !strncmp(info.cache_path, prefix, strlen(prefix)),
                  "cache at %s", info.cache_path ? info.cache_path : "(none)");
    snprintf(path, sizeof path, "%s", info.cache_path);
    ck_assert_uint_eq(info.index_bytes, 8 * (2 * 2 * 40 + 1 + (uint64_t)c->samples));
    ino_t first = inode_of(path);
    lms_sampler_free(s);

    /* reused as it is */
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    lms_sampler_info(s, &info);
    ck_assert_str_eq(info.cache_path, path);
    ck_assert(inode_of(path) == first);
    assert_golden_rows(s, c);
    lms_sampler_free(s);

    /* a damaged index fails its checksum and is built again */
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, 200, SEEK_SET);
    int byte = fgetc(f);
    fseek(f, 200, SEEK_SET);
    fputc(byte ^ 1, f);
    fclose(f);
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    ck_assert(inode_of(path) != first);
    assert_golden_rows(s, c);
    lms_sampler_free(s);

    /* another seed, another file */
    o.seed++;
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    lms_sampler_info(s, &info);
    ck_assert_str_ne(info.cache_path, path);
    lms_sampler_free(s);
    o.seed--;

    /* the limit from the environment */
    o.memory_limit = 0;
    setenv("LMS_SAMPLER_MEMORY_LIMIT", "1", 1);
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    lms_sampler_info(s, &info);
    ck_assert_str_eq(info.cache_path, path);
    lms_sampler_free(s);
    setenv("LMS_SAMPLER_MEMORY_LIMIT", "1k", 1);
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "LMS_SAMPLER_MEMORY_LIMIT"), "%s", err.msg);
    unsetenv("LMS_SAMPLER_MEMORY_LIMIT");
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK); /* 256 MiB: in memory */
    lms_sampler_info(s, &info);
    ck_assert_ptr_null(info.cache_path);
    lms_sampler_free(s);

    /* a directory that cannot take it: $TMPDIR instead, else a clear refusal */
    o.memory_limit = 1;
    char missing[320], alt[320];
    snprintf(missing, sizeof missing, "%s/missing", tmpdir);
    snprintf(alt, sizeof alt, "%s/alt", tmpdir);
    ck_assert_int_eq(mkdir(alt, 0755), 0);
    const char *saved = getenv("TMPDIR");
    char saved_tmp[4096] = "";
    if (saved)
        snprintf(saved_tmp, sizeof saved_tmp, "%s", saved);
    setenv("TMPDIR", alt, 1);
    o.cache_dir = missing;
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, NULL), LMS_OK);
    lms_sampler_info(s, &info);
    ck_assert_msg(!strncmp(info.cache_path, alt, strlen(alt)), "%s", info.cache_path);
    assert_golden_rows(s, c);
    lms_sampler_free(s);
    setenv("TMPDIR", missing, 1);
    ck_assert_int_eq(lms_sampler_new(ds, &o, &s, &err), LMS_EIO);
    ck_assert_msg(strstr(err.msg, "cache file") && strstr(err.msg, missing) &&
                  strstr(err.msg, "No such file"), "%s", err.msg);
    if (saved)
        setenv("TMPDIR", saved_tmp, 1);
    else
        unsetenv("TMPDIR");
    lms_dataset_free(ds);
    golden_free(&g);
    remove_tmp();
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("dataset");
    tcase_add_test(tc, write_read_roundtrip);
    tcase_add_test(tc, idx_validation);
    tcase_add_test(tc, raw_ids);
    tcase_add_test(tc, fingerprint);
    tcase_add_test(tc, split);
    tcase_add_test(tc, sampler);
    tcase_add_test(tc, short_run_covers_corpus);
    tcase_add_test(tc, calibration_rows_cover_corpus);
    tcase_add_test(tc, separate_final_epoch);
    tcase_add_test(tc, golden_row_order);
    tcase_add_test(tc, index_cache);
    tcase_add_test(tc, bin_truncated_while_open);
    suite_add_tcase(s, tc);
    return s;
}
