#!/bin/sh
# Prints the base names of the files in directory $1 matching glob $2, one per line (configure-time
# check that every test file is registered).
cd "$1" || exit 1
for f in $2; do [ -e "$f" ] && echo "$f"; done
exit 0
