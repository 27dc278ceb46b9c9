/* Indexed datasets: the writer's .idx bytes equal the layout of include/lms/dataset.h built by
 * hand here; the reader returns what was written, rejects each defect with a message naming it;
 * the raw id reader sees fixtures/corpus/val.ids.u16; the split matches megatron-core's
 * _get_split_indices arithmetic; the sampler is deterministic and covers the data; the data
 * fingerprint of an open dataset equals its path's, over the bytes include/lms/dataset.h lists. */
#include <stdlib.h>
#include <string.h>
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
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
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
    lms_dataset_fingerprint(ds, hex);
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
    lms_dataset_fingerprint(ds, a);
    lms_dataset_free(ds);
    ck_assert_str_eq(a, want);
    ck_assert_int_eq(lms_dataset_open(other, &ds, &err), LMS_OK);
    lms_dataset_fingerprint(ds, b);
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
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
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
    suite_add_tcase(s, tc);
    return s;
}
