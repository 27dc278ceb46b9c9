/* Atomic outputs (lms/outdir.h): what a commit may replace when the destination changes during
 * the run, the registry of temporaries an interrupt removes (lms/tempfiles.h), and the overlap
 * check between the paths a command reads and writes (lms/paths.h). Each case makes the
 * destination appear between begin and commit itself, so the races are deterministic. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/outdir.h"
#include "lms/paths.h"
#include "lms/tempfiles.h"

static char base[PATH_MAX];

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(base, sizeof base, "%s/lms-test-outdir-XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(base));
}

static void teardown(void)
{
    lms_remove_tree(base);
}

/* base/rel into dst */
static const char *at(const char *rel, char *dst)
{
    snprintf(dst, PATH_MAX, "%s/%s", base, rel);
    return dst;
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* The whole content of a small file ("" when it cannot be read). */
static const char *get(const char *path)
{
    static char buf[256];
    buf[0] = '\0';
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return buf;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

/* Entries of base whose name contains needle. */
static int count_entries(const char *needle)
{
    DIR *d = opendir(base);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, needle) != NULL;
    closedir(d);
    return n;
}

/* An output directory begun for dest holding one file "model" with text. */
static void begin_with(const char *dest, bool force, const char *text, struct lms_outdir *od)
{
    struct lms_error err;
    char p[PATH_MAX];
    ck_assert_msg(lms_outdir_begin(dest, force, od, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_outdir_path(od, "model", p, sizeof p, &err), LMS_OK);
    put(p, text);
}

/* The kept path the refusal message names: the text between the last pair of quotes. */
static const char *kept_path(const char *msg, char *dst)
{
    const char *end = strrchr(msg, '\'');
    ck_assert_ptr_nonnull(end);
    const char *start = end - 1;
    while (start > msg && *start != '\'')
        start--;
    snprintf(dst, PATH_MAX, "%.*s", (int)(end - start - 1), start + 1);
    return dst;
}

START_TEST(dir_appearing_during_the_run_is_left_alone)
{
    char dest[PATH_MAX], p[PATH_MAX], kept[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    at("O", dest);
    begin_with(dest, false, "new", &od);
    /* what another process does meanwhile */
    ck_assert_int_eq(mkdir(dest, 0755), 0);
    put(at("O/notes.txt", p), "x\n");
    ck_assert_int_eq(lms_outdir_commit(&od, &err), LMS_EEXIST);
    ck_assert_str_eq(get(at("O/notes.txt", p)), "x\n");
    ck_assert_int_eq(access(at("O/model", p), F_OK), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "appeared"));
    /* the finished output survives under the name the message gives */
    kept_path(err.msg, kept);
    ck_assert_ptr_nonnull(strstr(kept, "O.lms-kept-"));
    snprintf(p, sizeof p, "%s/model", kept);
    ck_assert_str_eq(get(p), "new");
    ck_assert_int_eq(count_entries(".lms-tmp-"), 0);
}
END_TEST

START_TEST(second_of_two_writers_to_a_new_dest_is_refused)
{
    char dest[PATH_MAX], p[PATH_MAX];
    struct lms_outdir a, b;
    struct lms_error err;
    at("O", dest);
    begin_with(dest, false, "first", &a);
    begin_with(dest, false, "second", &b);
    ck_assert_msg(lms_outdir_commit(&a, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_outdir_commit(&b, &err), LMS_EEXIST);
    ck_assert_str_eq(get(at("O/model", p)), "first");
    ck_assert_int_eq(count_entries(".lms-tmp-"), 0);
    ck_assert_int_eq(count_entries("O.lms-kept-"), 1);
}
END_TEST

START_TEST(empty_dir_of_the_start_is_still_replaced)
{
    char dest[PATH_MAX], p[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    ck_assert_int_eq(mkdir(at("O", dest), 0755), 0);
    begin_with(dest, false, "new", &od);
    ck_assert_msg(lms_outdir_commit(&od, &err) == LMS_OK, "%s", err.msg);
    ck_assert_str_eq(get(at("O/model", p)), "new");
    ck_assert_int_eq(count_entries(".lms-"), 0);
}
END_TEST

START_TEST(empty_dir_filled_during_the_run_is_left_alone)
{
    char dest[PATH_MAX], p[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    ck_assert_int_eq(mkdir(at("O", dest), 0755), 0);
    begin_with(dest, false, "new", &od);
    put(at("O/notes.txt", p), "x\n");
    ck_assert_int_eq(lms_outdir_commit(&od, &err), LMS_EEXIST);
    ck_assert_str_eq(get(at("O/notes.txt", p)), "x\n");
    ck_assert_int_eq(count_entries(".lms-tmp-"), 0);
}
END_TEST

START_TEST(file_in_place_of_a_new_dir_is_left_alone)
{
    char dest[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    at("O", dest);
    begin_with(dest, false, "new", &od);
    put(dest, "someone's file");
    ck_assert_int_eq(lms_outdir_commit(&od, &err), LMS_EEXIST);
    ck_assert_str_eq(get(dest), "someone's file");
}
END_TEST

START_TEST(force_replaces_what_appeared)
{
    char dest[PATH_MAX], p[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    at("O", dest);
    begin_with(dest, true, "new", &od);
    ck_assert_int_eq(mkdir(dest, 0755), 0);
    put(at("O/notes.txt", p), "x\n");
    ck_assert_msg(lms_outdir_commit(&od, &err) == LMS_OK, "%s", err.msg);
    ck_assert_str_eq(get(at("O/model", p)), "new");
    ck_assert_int_eq(access(at("O/notes.txt", p), F_OK), -1);
    ck_assert_int_eq(count_entries(".lms-"), 0);
}
END_TEST

START_TEST(file_appearing_during_the_run_is_left_alone)
{
    char dest[PATH_MAX], kept[PATH_MAX];
    struct lms_outfile of;
    struct lms_error err;
    at("x.json", dest);
    ck_assert_int_eq(lms_outfile_begin(dest, false, &of, &err), LMS_OK);
    ck_assert_int_eq(lms_write_all(of.fd, "new", 3, of.tmp, &err), LMS_OK);
    put(dest, "x\n");
    ck_assert_int_eq(lms_outfile_commit(&of, &err), LMS_EEXIST);
    ck_assert_str_eq(get(dest), "x\n");
    ck_assert_str_eq(get(kept_path(err.msg, kept)), "new");
    ck_assert_ptr_nonnull(strstr(kept, "x.json.lms-kept-"));
    ck_assert_int_eq(count_entries(".lms-tmp-"), 0);
}
END_TEST

START_TEST(file_begin_refuses_and_force_replaces)
{
    char dest[PATH_MAX];
    struct lms_outfile of;
    struct lms_error err;
    put(at("x.json", dest), "old");
    ck_assert_int_eq(lms_outfile_begin(dest, false, &of, &err), LMS_EEXIST);
    ck_assert_int_eq(lms_outfile_begin(base, true, &of, &err), LMS_EEXIST); /* a directory */
    ck_assert_int_eq(lms_outfile_begin(dest, true, &of, &err), LMS_OK);
    ck_assert_int_eq(lms_write_all(of.fd, "new", 3, of.tmp, &err), LMS_OK);
    ck_assert_msg(lms_outfile_commit(&of, &err) == LMS_OK, "%s", err.msg);
    ck_assert_str_eq(get(dest), "new");
    ck_assert_int_eq(count_entries(".lms-"), 0);
    /* an aborted file leaves nothing */
    ck_assert_int_eq(lms_outfile_begin(at("y.json", dest), false, &of, &err), LMS_OK);
    lms_outfile_abort(&of);
    ck_assert_int_eq(count_entries("y.json"), 0);
}
END_TEST

START_TEST(remove_all_takes_the_temporaries_in_progress_only)
{
    char dest[PATH_MAX], p[PATH_MAX], outside[PATH_MAX];
    struct lms_outdir done, busy;
    struct lms_outfile file;
    struct lms_error err;
    begin_with(at("done", dest), false, "kept", &done);
    ck_assert_msg(lms_outdir_commit(&done, &err) == LMS_OK, "%s", err.msg);
    begin_with(at("busy", dest), false, "partial", &busy);
    /* a tree a few levels deep, and a link out of it whose target must survive */
    ck_assert_int_eq(lms_outdir_path(&busy, "iter_0000000", p, sizeof p, &err), LMS_OK);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    for (int i = 0; i < 300; i++) { /* more entries than one read of the directory returns */
        char f[PATH_MAX];
        snprintf(f, sizeof f, "%s/shard-%03d.distcp", p, i);
        put(f, "data");
    }
    put(at("outside.txt", outside), "precious");
    char link_path[PATH_MAX];
    snprintf(link_path, sizeof link_path, "%s/link", p);
    ck_assert_int_eq(symlink(outside, link_path), 0);
    ck_assert_int_eq(lms_outfile_begin(at("x.json", dest), false, &file, &err), LMS_OK);
    ck_assert_int_eq(count_entries(".lms-tmp-"), 2);

    lms_temp_remove_all(); /* what the interrupt handler does */
    ck_assert_int_eq(count_entries(".lms-tmp-"), 0);
    ck_assert_str_eq(get(outside), "precious");
    ck_assert_str_eq(get(at("done/model", p)), "kept");
    /* the writers' own clean-up after that finds nothing to remove */
    close(file.fd);
    file.fd = -1;
    lms_outfile_abort(&file);
    lms_outdir_abort(&busy);
    ck_assert_str_eq(get(at("done/model", p)), "kept");
}
END_TEST

START_TEST(registry_forgets_committed_and_aborted_outputs)
{
    char dest[PATH_MAX], p[PATH_MAX];
    struct lms_outdir od;
    struct lms_error err;
    begin_with(at("a", dest), false, "A", &od);
    lms_outdir_abort(&od);
    begin_with(at("b", dest), false, "B", &od);
    ck_assert_int_eq(lms_outdir_commit(&od, &err), LMS_OK);
    /* an old destination replaced with force is gone, the new one stays */
    begin_with(at("b", dest), true, "B2", &od);
    ck_assert_int_eq(lms_outdir_commit(&od, &err), LMS_OK);
    lms_temp_remove_all();
    ck_assert_str_eq(get(at("b/model", p)), "B2");
    ck_assert_int_eq(count_entries(".lms-"), 0);
    /* more registrations than slots over time: freed slots are reused */
    for (int i = 0; i < 100; i++) {
        begin_with(at("c", dest), false, "C", &od);
        lms_outdir_abort(&od);
    }
    ck_assert(lms_temp_track("/nonexistent/lms-test-slot"));
    lms_temp_forget("/nonexistent/lms-test-slot");
}
END_TEST

/* ---- overlaps ---------------------------------------------------------------------------- */

static enum lms_status check2(const char *out, const char *in, enum lms_path_use use,
                              struct lms_error *err)
{
    const struct lms_path_role r[] = {{out, NULL, LMS_PATH_WRITE}, {in, "the input", use}};
    lms_error_clear(err);
    return lms_paths_check(r, 2, err);
}

START_TEST(overlap_by_path)
{
    char in[PATH_MAX], p[PATH_MAX], sib[PATH_MAX];
    struct lms_error err;
    ck_assert_int_eq(mkdir(at("model", in), 0755), 0);
    put(at("model/config.json", p), "{}");
    ck_assert_int_eq(check2(in, in, LMS_PATH_READ, &err), LMS_EINVAL);
    ck_assert_str_eq(err.msg + strlen(err.msg) - strlen("model'"), "model'");
    ck_assert_ptr_nonnull(strstr(err.msg, "it overlaps the input"));
    ck_assert_int_eq(check2(at("model/sub/out", p), in, LMS_PATH_READ, &err), LMS_EINVAL);
    ck_assert_int_eq(check2(base, in, LMS_PATH_READ, &err), LMS_EINVAL); /* contains it */
    /* lexical parts of a path that does not exist yet */
    snprintf(p, sizeof p, "%s/elsewhere/../model/x", base);
    ck_assert_int_eq(check2(p, in, LMS_PATH_READ, &err), LMS_EINVAL);
    /* a sibling sharing a prefix of the name is apart */
    ck_assert_int_eq(check2(at("model2", sib), in, LMS_PATH_READ, &err), LMS_OK);
    ck_assert_int_eq(check2(at("model.out", sib), in, LMS_PATH_READ, &err), LMS_OK);
    /* an output reached through a link to the input */
    ck_assert_int_eq(symlink(in, at("alias", p)), 0);
    ck_assert_int_eq(check2(at("alias/new", p), in, LMS_PATH_READ, &err), LMS_EINVAL);
    /* a read path that does not exist is left to the reader */
    ck_assert_int_eq(check2(at("out", p), at("missing", sib), LMS_PATH_READ, &err), LMS_OK);
}
END_TEST

START_TEST(overlap_through_links_below_an_input)
{
    /* the Hugging Face cache: snapshots/REV/FILE -> ../../blobs/HASH */
    char p[PATH_MAX], snap[PATH_MAX], blobs[PATH_MAX];
    struct lms_error err;
    ck_assert_int_eq(mkdir(at("hub", p), 0755), 0);
    ck_assert_int_eq(mkdir(at("hub/blobs", blobs), 0755), 0);
    ck_assert_int_eq(mkdir(at("hub/snapshots", p), 0755), 0);
    ck_assert_int_eq(mkdir(at("hub/snapshots/rev", snap), 0755), 0);
    put(at("hub/blobs/abc123", p), "weights");
    ck_assert_int_eq(symlink("../../blobs/abc123", at("hub/snapshots/rev/model.safetensors", p)),
                     0);
    put(at("hub/snapshots/rev/config.json", p), "{}");
    ck_assert_int_eq(check2(blobs, snap, LMS_PATH_READ, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.safetensors"));
    ck_assert_ptr_nonnull(strstr(err.msg, "abc123"));
    ck_assert_int_eq(check2(at("hub/other", p), snap, LMS_PATH_READ, &err), LMS_OK);
    /* one level further down (a NeMo checkpoint's weights/) */
    ck_assert_int_eq(mkdir(at("nemo", p), 0755), 0);
    ck_assert_int_eq(mkdir(at("nemo/weights", p), 0755), 0);
    ck_assert_int_eq(symlink(at("hub/blobs/abc123", snap), at("nemo/weights/__0_0.distcp", p)),
                     0);
    ck_assert_int_eq(check2(blobs, at("nemo", snap), LMS_PATH_READ, &err), LMS_EINVAL);
    /* a dangling link is no overlap */
    ck_assert_int_eq(symlink(at("gone", snap), at("nemo/dangling", p)), 0);
    ck_assert_int_eq(check2(at("other", p), at("nemo", snap), LMS_PATH_READ, &err), LMS_OK);
}
END_TEST

START_TEST(overlap_of_data_and_of_two_outputs)
{
    char out[PATH_MAX], p[PATH_MAX], prefix[PATH_MAX];
    struct lms_error err;
    ck_assert_int_eq(mkdir(at("out", out), 0755), 0);
    put(at("out/data_text_document.bin", p), "ids");
    put(at("out/data_text_document.idx", p), "idx");
    at("out/data_text_document", prefix);
    ck_assert_int_eq(check2(out, prefix, LMS_PATH_READ_DATA, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "data_text_document.bin"));
    put(at("ids.u16", p), "raw");
    ck_assert_int_eq(check2(out, p, LMS_PATH_READ_DATA, &err), LMS_OK);
    ck_assert_int_eq(check2(p, p, LMS_PATH_READ_DATA, &err), LMS_EINVAL);
    /* two written paths: a log inside the output it would be swapped away with */
    char log[PATH_MAX], state[PATH_MAX];
    const struct lms_path_role r[] = {{out, "--out", LMS_PATH_WRITE},
                                      {at("out.state", state), "the state", LMS_PATH_WRITE},
                                      {at("out/run.metrics.jsonl", log), "the metrics file",
                                       LMS_PATH_WRITE}};
    ck_assert_int_eq(lms_paths_check(r, 3, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "the metrics file"));
    ck_assert_ptr_nonnull(strstr(err.msg, "--out"));
    ck_assert_int_eq(lms_paths_check(r, 2, &err), LMS_OK);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("outdir");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, dir_appearing_during_the_run_is_left_alone);
    tcase_add_test(tc, second_of_two_writers_to_a_new_dest_is_refused);
    tcase_add_test(tc, empty_dir_of_the_start_is_still_replaced);
    tcase_add_test(tc, empty_dir_filled_during_the_run_is_left_alone);
    tcase_add_test(tc, file_in_place_of_a_new_dir_is_left_alone);
    tcase_add_test(tc, force_replaces_what_appeared);
    tcase_add_test(tc, file_appearing_during_the_run_is_left_alone);
    tcase_add_test(tc, file_begin_refuses_and_force_replaces);
    tcase_add_test(tc, remove_all_takes_the_temporaries_in_progress_only);
    tcase_add_test(tc, registry_forgets_committed_and_aborted_outputs);
    tcase_add_test(tc, overlap_by_path);
    tcase_add_test(tc, overlap_through_links_below_an_input);
    tcase_add_test(tc, overlap_of_data_and_of_two_outputs);
    suite_add_tcase(s, tc);
    return s;
}
