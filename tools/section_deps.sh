#!/bin/sh
# tools/section_deps.sh [CC]: checks that every section of distgan.h uses
# only the sections above it (docs: design.md, "each one only uses the
# sections above it").
#
# Method: the compiler is the judge.  For each section S (in the order of
# the `/* ==== dg_x ==== */` markers), cut distgan.h down to its prelude,
# the public and implementation parts of the sections up to and including S,
# and its closing lines, and compile that with -fsyntax-only (adacomp.h
# first, so the dg_asgd section is there too).  Whatever S (or a section
# above it) names from a later section is then undeclared: a function, a
# type, a variable, an enumerator or a macro.  The identifiers in the
# compiler's errors that first appear at S are S's violations.  A section
# starts at its marker, or at the `#if` lines just above it; the code kept
# out under another configuration (DG_NO_SIMD, C++) is not seen, nor a
# later name inside a macro body that only a later section expands.
# Exit status 1 when a section uses a later one.
CC=${1:-cc}
H=${SECTION_DEPS_HEADER:-distgan.h}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# line numbers: the start of every section in the public and the
# implementation part, and where each part's closing lines begin
awk '
/^\/\* ==== dg_[a-z_]+ ==== \*\/$/ {
    name = $3
    start = NR
    # an #if opening just above the marker belongs to the section
    for (j = NR - 1; j > 0 && (line[j] ~ /^#if/ || line[j] == ""); j--) if (line[j] ~ /^#if/) start = j
    part = impl ? "impl" : "pub"
    print part, name, start
}
/^#if defined\(DISTGAN_IMPLEMENTATION\) && !defined\(DISTGAN_IMPLEMENTATION_INCLUDED\)/ { impl = 1 }
/^#endif \/\* DISTGAN_H \*\/$/ { pub_end = NR - 3 }            # #ifdef __cplusplus / } / #endif
/^#ifdef DG__POP_DIAGNOSTIC$/ { impl_end = NR }
{ line[NR] = $0 }
END { print "end pub", pub_end; print "end impl", impl_end; print "end file", NR }
' $H >"$tmp/marks"

pub_names=$(awk '$1 == "pub" { print $2 }' "$tmp/marks")
impl_names=$(awk '$1 == "impl" { print $2 }' "$tmp/marks")
if [ "$pub_names" != "$impl_names" ]; then
    echo "section_deps: the public and implementation parts list different sections:"
    echo "  public:         " $pub_names
    echo "  implementation: " $impl_names
    exit 1
fi

bad=0
: >"$tmp/seen"
for s in $impl_names; do
    # keep the sections up to s: drop [start of the next section, end of the part)
    awk -v s="$s" -v marks="$tmp/marks" '
    BEGIN {
        while ((getline l < marks) > 0) {
            split(l, f, " ")
            if (f[1] == "end") { end[f[2]] = f[3]; continue }
            n[f[1]]++; nm[f[1], n[f[1]]] = f[2]; st[f[1], n[f[1]]] = f[3]
        }
        for (p = 1; p <= 2; p++) {
            part = p == 1 ? "pub" : "impl"
            cut_from[part] = 0
            for (i = 1; i <= n[part]; i++)
                if (nm[part, i] == s && i < n[part]) cut_from[part] = st[part, i + 1]
        }
    }
    {
        if (cut_from["pub"] && NR >= cut_from["pub"] && NR < end["pub"]) next
        if (cut_from["impl"] && NR >= cut_from["impl"] && NR < end["impl"]) next
        print
    }' $H >"$tmp/upto.h"
    printf '#include "%s/adacomp.h"\n#define DISTGAN_IMPLEMENTATION\n#include "%s"\n' "$PWD" "$tmp/upto.h" >"$tmp/t.c"
    LC_ALL=C $CC -std=c11 -fsyntax-only -fmax-errors=0 -Werror=implicit-function-declaration "$tmp/t.c" \
        >"$tmp/err" 2>&1
    # the names the compiler could not find
    grep -E 'error' "$tmp/err" | sed -n \
        -e "s/.*'\([A-Za-z_][A-Za-z0-9_]*\)' undeclared.*/\1/p" \
        -e "s/.*implicit declaration of function '\([A-Za-z_][A-Za-z0-9_]*\)'.*/\1/p" \
        -e "s/.*unknown type name '\([A-Za-z_][A-Za-z0-9_]*\)'.*/\1/p" \
        -e "s/.*storage size of '\([A-Za-z_][A-Za-z0-9_]*\)' isn't known.*/struct of \1/p" \
        -e "s/.*'\([A-Za-z_][A-Za-z0-9_]*\)' has no member named.*/member of \1/p" |
        sort -u >"$tmp/names"
    # names already reported for a section above are not s's
    new=$(comm -23 "$tmp/names" "$tmp/seen")
    if [ -s "$tmp/err" ] && grep -q error "$tmp/err"; then
        if [ -n "$new" ]; then
            echo "$s uses later sections: $(echo $new)"
        elif [ ! -s "$tmp/names" ]; then
            echo "$s: does not compile on its own:"; grep error "$tmp/err" | head -5
        fi
        bad=1
    else
        echo "$s ok"
    fi
    sort -u "$tmp/names" "$tmp/seen" >"$tmp/seen.new"; mv "$tmp/seen.new" "$tmp/seen"
done
exit $bad
