#!/bin/sh
# need-packages.sh PKG:FILE ...: installs each Debian package whose marker
# FILE is missing.  As root it runs apt-get; otherwise it prints the exact
# command and fails, so that `make` stops with something to do.
missing=""
for spec in "$@"; do
    pkg=${spec%%:*}
    file=${spec#*:}
    [ -e "$file" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing:$missing"
    { apt-get install -y -q $missing || { apt-get update -q && apt-get install -y -q $missing; }; } >/dev/null
    exit $?
fi
if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "installing:$missing"
    { sudo apt-get install -y -q $missing || { sudo apt-get update -q && sudo apt-get install -y -q $missing; }; } >/dev/null
    exit $?
fi
echo "missing Debian packages:$missing"
echo "run: sudo apt-get install -y$missing"
exit 1
