#!/usr/bin/env bash
# The library's layers as the build enforces them, against the table in the README ("Layers"):
# the README's table and the build's (meson.build's lms_layers) say the same; each layer's check
# library (liblms-layer-NAME.so, linked with undefined symbols refused against the layers its
# row names) uses no other layer; and a call into a layer above fails to link, while the same
# call links against the layer that defines it.
set -u

ROOT=${LMS_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${LMS_BUILD_ROOT:?LMS_BUILD_ROOT must name the build directory}
CC=${CC:-cc}
[ -f "$BUILD/liblms-layer-common.so" ] || { echo "SKIP: no layer libraries in this build"; exit 77; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lms-layers.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
n_checks=0
n_fail=0
fail() {
    echo "FAIL: $*" >&2
    n_fail=$((n_fail + 1))
}

# The README's table: | `NAME/` | job | may call (comma-separated, or -) |
table=$(awk '/^## Layers/ {on = 1; next} on && /^## / {on = 0} on && /^\| `[a-z]+\/` \|/' \
            "$ROOT/README.md")
[ -n "$table" ] || fail "README.md has no Layers table"
# The build's table (meson.build's lms_layers): ['NAME', NAME_src, ['LOWER', ...]], one
# layer per entry, possibly over two lines.
meson_table=$(python3 - "$ROOT/meson.build" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = text[text.index("lms_layers = ["):]
block = block[:block.index("\n]\n")]
for name, calls in re.findall(r"\['([a-z]+)', [a-z_]+,\s*\[([^\]]*)\]\]", block):
    print(name, " ".join(sorted(re.findall(r"'([a-z]+)'", calls))))
PY
)
layers_seen=0
while IFS='|' read -r _ name _ calls _; do
    layer=$(echo "$name" | tr -d ' `/')
    [ "$layer" = cli ] && continue
    layers_seen=$((layers_seen + 1))
    want=$(echo "$calls" | tr -d ' –-' | tr ',' '\n' | sed '/^$/d' | sort | tr '\n' ' ' | sed 's/ $//')
    n_checks=$((n_checks + 1))
    built_calls=$(echo "$meson_table" | awk -v l="$layer" '$1 == l {$1 = ""; print substr($0, 2)}')
    [ "$want" = "$built_calls" ] ||
        fail "layer $layer: the README says it may call [$want], meson.build [$built_calls]"
    # what the layer's library was linked against (the linker keeps the ones it used)
    lib=$BUILD/liblms-layer-$layer.so
    n_checks=$((n_checks + 1))
    if [ ! -f "$lib" ]; then
        fail "the README names layer $layer, the build has no $lib"
        continue
    fi
    for used in $(readelf -d "$lib" | sed -n 's/.*Shared library: \[liblms-layer-\([a-z]*\)\.so\].*/\1/p'); do
        case " $want " in
        *" $used "*) ;;
        *) fail "layer $layer links layer $used, which the table does not let it call" ;;
        esac
    done
done <<< "$table"
n_checks=$((n_checks + 1))
[ "$(echo "$meson_table" | wc -l)" = "$layers_seen" ] ||
    fail "meson.build has $(echo "$meson_table" | wc -l) layers, the README's table $layers_seen"
built=$(ls "$BUILD"/liblms-layer-*.so | wc -l)
n_checks=$((n_checks + 1))
[ "$built" = "$layers_seen" ] || fail "the build has $built layer libraries, the README's table $layers_seen"

# An upward call: code in the ir layer that calls the optimiser defaults (engine/, a layer above).
cat > "$TMP/upward.c" <<'C'
struct lms_adamw;
void lms_adamw_defaults(struct lms_adamw *o);
void ir_calls_up(struct lms_adamw *o);
void ir_calls_up(struct lms_adamw *o) { lms_adamw_defaults(o); }
C
n_checks=$((n_checks + 1))
if "$CC" -shared -fPIC -Wl,--no-undefined -o "$TMP/up.so" "$TMP/upward.c" \
        -L"$BUILD" -llms-layer-ir -llms-layer-common 2> "$TMP/up.err"; then
    fail "a call from ir into a layer above linked"
elif ! grep -q "undefined reference to .lms_adamw_defaults" "$TMP/up.err"; then
    fail "the upward call failed for another reason: $(head -3 "$TMP/up.err")"
fi
definer=$(for l in "$BUILD"/liblms-layer-*.so; do
              nm -D --defined-only "$l" | grep -q ' T lms_adamw_defaults$' && basename "$l"
          done | head -1)
n_checks=$((n_checks + 1))
if [ -z "$definer" ]; then
    fail "no layer defines lms_adamw_defaults"
else
    definer=${definer#lib}
    "$CC" -shared -fPIC -Wl,--no-undefined -o "$TMP/up.so" "$TMP/upward.c" \
        -L"$BUILD" -Wl,-rpath-link,"$BUILD" -l"${definer%.so}" 2> "$TMP/ok.err" ||
        fail "the same call does not link against ${definer%.so}: $(head -3 "$TMP/ok.err")"
fi

echo "$((n_checks - n_fail)) of $n_checks checks passed"
[ "$n_fail" -eq 0 ]
