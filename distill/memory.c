/* How much memory the machine offers a run (include/lms/distill.h): the kernel's estimate of
 * what can be allocated without swapping, capped by the cgroup limit the process runs under
 * (containers and CI runners see the host's MemAvailable otherwise). */
#include <inttypes.h>
#include <string.h>
#include <stdio.h>
#include <string.h>

#include "lms/distill.h"
#include "lms/engine.h"
#include "lms/train.h"

static bool read_u64_file(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[64];
    bool ok = fgets(line, sizeof line, f) && sscanf(line, "%" SCNu64, out) == 1;
    fclose(f);
    return ok; /* "max" (no limit) does not parse */
}

uint64_t lms_memory_available(void)
{
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        uint64_t kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1)
                avail = kb * 1024;
        fclose(f);
    }
    uint64_t max, cur;
    if (read_u64_file("/sys/fs/cgroup/memory.max", &max) &&
        read_u64_file("/sys/fs/cgroup/memory.current", &cur)) {
        uint64_t left = max > cur ? max - cur : 0;
        if (!avail || left < avail)
            avail = left;
    }
    return avail;
}

enum lms_status lms_distill_memory_plan(const struct lms_distill_shape *s,
                                        struct lms_distill_memory *m, struct lms_error *err)
{
    memset(m, 0, sizeof *m);
    const struct lms_train_plan *tp = s->trainer;
    m->weights = tp->weights + tp->working;
    m->moments = tp->moments;
    m->gradients = tp->grads;
    m->activations = tp->activations + tp->logits + tp->hidden;
    if (s->teacher) {
        struct lms_engine_opts eo = {.max_batch = s->mbs, .max_seq = s->seq};
        struct lms_fwd_plan fp;
        if (lms_fwd_plan_make(s->teacher, s->teacher->padded_vocab, &eo, &fp, err))
            return lms_error_wrap(err, "teacher: ");
        m->teacher = (uint64_t)s->teacher_params * s->teacher_weight_bytes + fp.bytes;
    }
    m->save = (uint64_t)tp->n_params * s->out_bytes;
    m->data = 2 * (uint64_t)s->mbs * (uint64_t)(s->seq + 1) * sizeof(int32_t) +
              (uint64_t)s->n_rows_planned * (sizeof(uint16_t) + sizeof(int64_t));
    if (s->device) {
        /* the CUDA context (~0.5 GiB), cuBLASLt's 32 MiB workspace, and the scratch where both
         * operands of the largest training GEMM are rounded to bf16: the weight gradient of the
         * gate|up projection reads the (N, 2F) gradient and the (N, H) norm output (the
         * teacher is the wider model of a distillation) */
        const struct lms_arch *t = s->teacher ? s->teacher : s->student;
        uint64_t N = (uint64_t)s->mbs * (uint64_t)s->seq;
        uint64_t widest = 2 * (uint64_t)t->ffn + (uint64_t)t->hidden;
        m->runtime = ((uint64_t)512 << 20) + ((uint64_t)32 << 20) + N * widest * 2 + 512;
        m->total = m->weights + m->moments + m->gradients + m->activations + m->teacher +
                   m->runtime;
        m->host = m->save + m->data;
        m->available = 0; /* the caller asks the device */
        return LMS_OK;
    }
    m->total = m->weights + m->moments + m->gradients + m->activations + m->save + m->teacher +
               m->data;
    m->available = lms_memory_available();
    return LMS_OK;
}
