/* Content fingerprints: the XXH64 hash against the algorithm's published values and, where the
 * system has it, against libxxhash itself on many lengths and split points; the fingerprint of
 * a dataset and of a model unchanged by moving the files (and, for a model, by converting it
 * to NeMo), changed by one byte of content in each part that is read. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/dataset.h"
#include "lms/format.h"
#include "lms/hash.h"
#include "lms/ir.h"

static char tmpdir[256];

static void make_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lms-test-fp-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void run_sh(const char *fmt, const char *a, const char *b)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
}

/* Published XXH64 values (the empty input, "a", "abc", and the 39-byte sentence of the python
 * binding's documentation, which takes the four-lane path). */
START_TEST(hash_known_values)
{
    ck_assert_uint_eq(lms_hash64("", 0, 0), 0xef46db3751d8e999ull);
    ck_assert_uint_eq(lms_hash64("a", 1, 0), 0xd24ec4f1a98c6e5bull);
    ck_assert_uint_eq(lms_hash64("abc", 3, 0), 0x44bc2cf5ad770999ull);
    const char *s = "Nobody inspects the spammish repetition";
    ck_assert_uint_eq(lms_hash64(s, strlen(s), 0), 0xfbcea83c8a378bf1ull);
    char hex[LMS_HASH64_HEX];
    lms_hash64_hex(0xfbcea83c8a378bf1ull, hex);
    ck_assert_str_eq(hex, "fbcea83c8a378bf1");
    lms_hash64_hex(5, hex);
    ck_assert_str_eq(hex, "0000000000000005");
}
END_TEST

/* Streaming in pieces equals one call, and both equal libxxhash's XXH64 (when installed) for
 * every length 0..300 and a few large ones, with seeds. */
START_TEST(hash_matches_libxxhash)
{
    size_t big = 70000;
    unsigned char *data = malloc(big);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < big; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        data[i] = (unsigned char)x;
    }
    void *lib = dlopen("libxxhash.so.0", RTLD_NOW);
    typedef unsigned long long (*xxh64_fn)(const void *, size_t, unsigned long long);
    xxh64_fn ref = NULL;
    if (lib) { /* POSIX's way to turn dlsym's pointer into a function pointer */
        void *sym = dlsym(lib, "XXH64");
        memcpy(&ref, &sym, sizeof ref);
    }
    if (!ref)
        fprintf(stderr, "libxxhash.so.0 not found: checking streaming against one call only\n");
    size_t lens[] = {1000, 4096, 65536, 69999};
    for (size_t k = 0; k < 301 + sizeof lens / sizeof lens[0]; k++) {
        size_t n = k < 301 ? k : lens[k - 301];
        uint64_t seed = k % 3 == 0 ? 0 : k * 2654435761ull;
        uint64_t one = lms_hash64(data, n, seed);
        struct lms_hash64 h;
        lms_hash64_init(&h, seed);
        for (size_t at = 0, step = 1; at < n; step = step % 37 + 1) { /* pieces of 1..37 */
            size_t take = n - at < step ? n - at : step;
            lms_hash64_update(&h, data + at, take);
            at += take;
        }
        ck_assert_uint_eq(lms_hash64_digest(&h), one);
        if (ref)
            ck_assert_msg(one == ref(data, n, seed), "length %zu seed %llu", n,
                          (unsigned long long)seed);
    }
    if (lib)
        dlclose(lib);
    free(data);
}
END_TEST

static void write_bytes(const char *path, const unsigned char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

/* Flips one byte at offset off (from the end when negative) of path. */
static void flip_byte(const char *path, long off)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, off, off < 0 ? SEEK_END : SEEK_SET), 0);
    int c = fgetc(f);
    ck_assert_int_ne(c, EOF);
    ck_assert_int_eq(fseek(f, -1, SEEK_CUR), 0);
    fputc(c ^ 0x5a, f);
    ck_assert_int_eq(fclose(f), 0);
}

static void fingerprint(const char *path, char hex[LMS_HASH64_HEX])
{
    struct lms_error err;
    ck_assert_msg(lms_data_fingerprint(path, hex, &err) == LMS_OK, "%s", err.msg);
}

/* A 3 MiB dataset (.bin/.idx) and a raw id file: the fingerprint is the documented hash of the
 * parts read, the same after a move, another after a change in the head or tail of .bin or in
 * .idx; a change in the middle of .bin (not read) is not seen, as documented. */
START_TEST(data_fingerprint)
{
    make_tmp();
    char prefix[300], bin[320], idx[320], moved[320], hex[LMS_HASH64_HEX], hex2[LMS_HASH64_HEX];
    snprintf(prefix, sizeof prefix, "%s/ds", tmpdir);
    snprintf(bin, sizeof bin, "%s.bin", prefix);
    snprintf(idx, sizeof idx, "%s.idx", prefix);
    struct lms_dataset_writer *w;
    struct lms_error err;
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_U16, false, &w, &err), LMS_OK);
    size_t n = 3 << 19; /* 1.5 M ids = 3 MiB */
    int32_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 7919) % 65000);
    for (size_t d = 0; d < 3; d++) {
        ck_assert_int_eq(lms_dataset_writer_add(w, ids + d * (n / 3), n / 3, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
    }
    ck_assert_int_eq(lms_dataset_writer_finish(w, &err), LMS_OK);
    lms_dataset_writer_free(w);

    /* the documented bytes, hashed here from the files */
    FILE *f = fopen(idx, "rb");
    unsigned char *ib = malloc(4096);
    size_t ni = fread(ib, 1, 4096, f);
    fclose(f);
    unsigned char *bb = malloc(n * 2);
    f = fopen(bin, "rb");
    ck_assert_uint_eq(fread(bb, 1, n * 2, f), n * 2);
    fclose(f);
    struct lms_hash64 h;
    lms_hash64_init(&h, 0);
    lms_hash64_update_u64(&h, ni);
    lms_hash64_update(&h, ib, ni);
    lms_hash64_update_u64(&h, n * 2);
    lms_hash64_update(&h, bb, 1 << 20);
    lms_hash64_update(&h, bb + n * 2 - (1 << 20), 1 << 20);
    char want[LMS_HASH64_HEX];
    lms_hash64_hex(lms_hash64_digest(&h), want);
    fingerprint(prefix, hex);
    ck_assert_str_eq(hex, want);

    /* moved (other folder, other name): the same */
    snprintf(moved, sizeof moved, "%s/sub", tmpdir);
    run_sh("mkdir %s%s", moved, "");
    run_sh("mv %s.bin %s/other.bin", prefix, moved);
    run_sh("mv %s.idx %s/other.idx", prefix, moved);
    snprintf(prefix, sizeof prefix, "%s/other", moved);
    snprintf(bin, sizeof bin, "%s.bin", prefix);
    snprintf(idx, sizeof idx, "%s.idx", prefix);
    fingerprint(prefix, hex2);
    ck_assert_str_eq(hex2, hex);
    /* the middle of .bin is not read; its head, its tail and the .idx are */
    flip_byte(bin, (long)n);
    fingerprint(prefix, hex2);
    ck_assert_str_eq(hex2, hex);
    flip_byte(bin, 100);
    fingerprint(prefix, hex2);
    ck_assert_str_ne(hex2, hex);
    flip_byte(bin, 100);
    flip_byte(bin, -3);
    fingerprint(prefix, hex2);
    ck_assert_str_ne(hex2, hex);
    flip_byte(bin, -3);
    flip_byte(idx, 40);
    fingerprint(prefix, hex2);
    ck_assert_str_ne(hex2, hex);
    flip_byte(idx, 40);
    fingerprint(prefix, hex2);
    ck_assert_str_eq(hex2, hex);

    /* a raw id file: its size, first and last MiB (here all of it: 3 KiB) */
    char raw[320];
    snprintf(raw, sizeof raw, "%s/ids.u16", tmpdir);
    write_bytes(raw, bb, 3000);
    lms_hash64_init(&h, 0);
    lms_hash64_update_u64(&h, 3000);
    lms_hash64_update(&h, bb, 3000);
    lms_hash64_update(&h, bb, 3000);
    lms_hash64_hex(lms_hash64_digest(&h), want);
    fingerprint(raw, hex);
    ck_assert_str_eq(hex, want);
    /* nothing there: an error naming the path */
    snprintf(raw, sizeof raw, "%s/none", tmpdir);
    ck_assert_int_eq(lms_data_fingerprint(raw, hex, &err), LMS_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, raw));
    snprintf(raw, sizeof raw, "%s/none.u16", tmpdir);
    ck_assert_int_eq(lms_data_fingerprint(raw, hex, &err), LMS_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, raw));
    free(ib);
    free(bb);
    free(ids);
    run_sh("rm -rf %s%s", tmpdir, "");
}
END_TEST

static void model_fingerprint(const char *path, char hex[LMS_HASH64_HEX])
{
    struct lms_model m;
    struct lms_error err;
    ck_assert_msg(lms_checkpoint_read(path, &m, &err) == LMS_OK, "%s: %s", path, err.msg);
    ck_assert_msg(lms_model_fingerprint(&m, hex, &err) == LMS_OK, "%s", err.msg);
    lms_model_release(&m);
}

/* A model's fingerprint: the same for a copy elsewhere, for its NeMo 2 conversion and for the
 * same tensors in other shards; another when one byte of one weight differs. */
START_TEST(model_fingerprint_content)
{
    make_tmp();
    char src[4096], copy[320], nemo[320], hex[LMS_HASH64_HEX], hex2[LMS_HASH64_HEX];
    fixture_path("models/qwen3-tiny", src, sizeof src);
    model_fingerprint(src, hex);
    ck_assert_uint_eq(strlen(hex), 16);
    snprintf(copy, sizeof copy, "%s/copy", tmpdir);
    run_sh("cp -r %s %s", src, copy);
    model_fingerprint(copy, hex2);
    ck_assert_str_eq(hex2, hex);

    struct lms_model m;
    struct lms_error err;
    ck_assert_int_eq(lms_checkpoint_read(src, &m, &err), LMS_OK);
    struct lms_write_opts wo = {.dtype = LMS_DTYPE_COUNT, .max_shard_size = 100000};
    struct lms_write_result res;
    snprintf(nemo, sizeof nemo, "%s/nemo", tmpdir);
    ck_assert_msg(lms_format_find("nemo")->write(&m, nemo, &wo, &res, &err) == LMS_OK, "%s",
                  err.msg);
    char sharded[320];
    snprintf(sharded, sizeof sharded, "%s/sharded", tmpdir);
    ck_assert_msg(lms_format_find("hf")->write(&m, sharded, &wo, &res, &err) == LMS_OK, "%s",
                  err.msg);
    ck_assert_int_gt(res.n_shards, 1);
    lms_model_release(&m);
    model_fingerprint(nemo, hex2);
    ck_assert_str_eq(hex2, hex);
    model_fingerprint(sharded, hex2);
    ck_assert_str_eq(hex2, hex);

    char st[400];
    snprintf(st, sizeof st, "%s/model.safetensors", copy);
    flip_byte(st, -2); /* the last byte of the last tensor's data */
    model_fingerprint(copy, hex2);
    ck_assert_str_ne(hex2, hex);
    run_sh("rm -rf %s%s", tmpdir, "");
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("fingerprint");
    TCase *tc = tcase_create("fingerprint");
    tcase_add_test(tc, hash_known_values);
    tcase_add_test(tc, hash_matches_libxxhash);
    tcase_add_test(tc, data_fingerprint);
    tcase_add_test(tc, model_fingerprint_content);
    suite_add_tcase(s, tc);
    return s;
}
