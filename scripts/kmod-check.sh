#!/usr/bin/env bash
# Everything chital.ko must pass besides its tests: a W=1 build with no warning (-Werror), sparse
# (C=2) with no warning, and checkpatch.pl --no-tree --strict (from Debian's linux-source).
# The build happens in a temporary copy of kmod/ so the tree stays clean.
#   scripts/kmod-check.sh [KDIR]     (default: the installed Debian kernel's build tree)
set -euo pipefail
cd "$(dirname "$0")/.."
kdir=${1:-$(ls -d /lib/modules/*/build 2>/dev/null | sort -V | head -n 1)}
[ -n "$kdir" ] && [ -d "$kdir" ] || { echo "kmod-check: no kernel build tree; run CHITAL_VM=1 scripts/bootstrap.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r kmod "$work/kmod"
echo "kmod-check: W=1 C=2 build against $kdir"
if ! make -s -C "$kdir" M="$work/kmod" W=1 C=2 KCFLAGS=-Werror modules >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "kmod-check: the build failed" >&2
    exit 1
fi
if grep -E "warning:|error:" "$work/build.log" >&2; then
    echo "kmod-check: the compiler or sparse warned" >&2
    exit 1
fi

lsx=.state/linux-source-scripts
if [ ! -f "$lsx/scripts/checkpatch.pl" ]; then
    src=$(ls /usr/src/linux-source-*.tar.* 2>/dev/null | sort -V | tail -n 1)
    [ -n "$src" ] || { echo "kmod-check: linux-source is not installed" >&2; exit 1; }
    mkdir -p "$lsx"
    tar -xf "$src" -C "$lsx" --strip-components=1 --wildcards \
        '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' '*/scripts/const_structs.checkpatch'
fi
echo "kmod-check: checkpatch.pl --no-tree --strict"
make -s -C kmod checkpatch CHECKPATCH="perl $PWD/$lsx/scripts/checkpatch.pl"
echo "kmod-check: clean"
