#!/usr/bin/env python3
"""Writes the linker version script of the shared library: the functions declared in the public
headers (include/lms/*.h) are exported, everything else is local.

usage: export_map.py OUTPUT HEADER...

A declaration is an identifier starting with "lms_" followed by "(" outside comments and
preprocessor lines; names beginning "lms__" are internal by the project's convention and stay
local even when a header mentions them."""
import re
import sys


def declared_functions(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    names = set(re.findall(r"\b(lms_[A-Za-z0-9_]+)\s*\(", text))
    return {n for n in names if not n.startswith("lms__")}


def main():
    out, headers = sys.argv[1], sys.argv[2:]
    names = set()
    for h in headers:
        with open(h, encoding="utf-8") as f:
            names |= declared_functions(f.read())
    body = "".join(f"    {n};\n" for n in sorted(names))
    with open(out, "w", encoding="utf-8") as f:
        f.write("LMSURGEON_0 {\n  global:\n" + body + "  local:\n    *;\n};\n")


if __name__ == "__main__":
    main()
