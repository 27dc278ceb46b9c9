/* lmsurgeon: the descriptors the registry (arch.c) lists, one file each (library-internal). */
#ifndef LMS_ARCH_FAMILIES_H
#define LMS_ARCH_FAMILIES_H

#include "lms/arch.h"

extern const struct lms_arch_desc lms__arch_llama;
extern const struct lms_arch_desc lms__arch_mistral;
extern const struct lms_arch_desc lms__arch_qwen2;
extern const struct lms_arch_desc lms__arch_qwen3;
extern const struct lms_arch_desc lms__arch_phi3;

#endif
