/* The learning-rate schedule (include/lms/distill.h): linear warm-up, then cosine decay to a
 * floor, then the floor. Evaluated in double precision; the engine receives it as a float. */
#include <math.h>

#include "lms/distill.h"

double lms_lr_at(const struct lms_lr_schedule *s, int64_t step)
{
    if (s->warmup > 0 && step <= s->warmup)
        return s->lr * (double)(step + 1) / (double)(s->warmup + 1);
    if (step > s->max_steps || s->max_steps <= s->warmup)
        return s->min_lr;
    double progress = (double)(step - s->warmup) / (double)(s->max_steps - s->warmup);
    return s->min_lr + (s->lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * progress));
}
