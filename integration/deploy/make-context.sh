#!/bin/sh
# make-context.sh OUT [BIN_DIR [PAUSE]]: assembles the build context of
# Containerfile in OUT (which must not exist) from the release binaries in
# BIN_DIR (default target/release), caisson-pause at PAUSE (default
# pause/target/release/caisson-pause), Debian's static busybox, this
# directory's script and ../systemd/caissond.service. Set KUBECTL to a static
# kubectl binary to let the installer label nodes.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 OUT [BIN_DIR [PAUSE]]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
OUT=$1
BIN_DIR=${2:-$REPO/target/release}
PAUSE=${3:-$REPO/pause/target/release/caisson-pause}
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ ! -e "$OUT" ] || { echo "$0: $OUT exists" >&2; exit 1; }
for f in "$BIN_DIR/caissond" "$BIN_DIR/containerd-shim-caisson-v2" "$PAUSE"; do
	[ -f "$f" ] || { echo "$0: $f not found: run make release" >&2; exit 1; }
done
if ! "$BUSYBOX" --list >/dev/null 2>&1; then
	echo "$0: $BUSYBOX is not a busybox: install Debian's busybox-static" >&2
	exit 1
fi
mkdir -p "$OUT/bin" "$OUT/tools"
cp "$BIN_DIR/caissond" "$BIN_DIR/containerd-shim-caisson-v2" "$OUT/bin/"
cp "$PAUSE" "$OUT/bin/caisson-pause"
"$BIN_DIR/caissond" --print-default-config >"$OUT/bin/caisson.toml"
cp "$BUSYBOX" "$OUT/busybox"
cp "$HERE/caisson-deploy.sh" "$OUT/"
cp "$HERE/../systemd/caissond.service" "$OUT/"
chmod 0755 "$OUT/caisson-deploy.sh"
if [ -n "${KUBECTL:-}" ]; then
	cp "$KUBECTL" "$OUT/tools/kubectl"
fi
echo "$OUT: build context ready"
