#include "check_main.h"
Suite *suite(void)
{
    return suite_create("train_ops");
}
