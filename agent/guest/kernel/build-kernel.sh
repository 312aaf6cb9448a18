#!/bin/bash
# Builds the microvm guest's own kernel from Debian's linux-source-6.1:
# `make tinyconfig`, the fragments beside this script (*.config), an
# uncompressed vmlinux with everything built in (no modules).
#
#   build-kernel.sh CACHE_DIR   builds once per key, prints the cached
#                               directory (vmlinux, config, kernel-release)
#   build-kernel.sh --release   prints the release the repo's config builds
#
# The key is a hash of this script, the fragments and the linux-source
# version; it is the kernel's local version (6.1.N-caisson-KEY), so the
# release a guest reports says which config it was built from. Only the
# first build on a machine pays (about 11 minutes on 2 cores).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
package=linux-source-6.1
tarball=/usr/src/$package.tar.xz

version=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)
[ -n "$version" ] && [ -f "$tarball" ] ||
  { echo "no $tarball: install $package (make microvm-deps)" >&2; exit 1; }
key=$({
  echo "$package $version"
  cat "$here/build-kernel.sh"
  for f in "$here"/*.config; do echo "== ${f##*/}"; cat "$f"; done
} | sha256sum | cut -c1-12)
localversion=-caisson-$key
# Debian's version is the upstream one (6.1.N) and a revision.
release=${version%%-*}$localversion

if [ "${1:-}" = --release ]; then
  echo "$release"
  exit 0
fi
[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR | --release" >&2; exit 2; }
cache=$1
done_dir=$cache/kernel-$key
mkdir -p "$cache"

# One build at a time on a machine (another clone may run `make` too).
exec 9>"$cache/kernel.lock"
flock -n 9 || { echo "waiting for another build of the guest kernel ($cache)" >&2; flock 9; }
if [ -s "$done_dir/vmlinux" ]; then
  echo "$done_dir"
  exit 0
fi

build=$cache/kernel-$key.build
log=$cache/kernel-$key.log
rm -rf "$build"
mkdir -p "$build"
trap 'rm -rf "$build"' EXIT
started=$(date +%s)
echo "building the guest kernel $release (log: $log)" >&2
tar -xJf "$tarball" -C "$build" --strip-components=1
cd "$build"
# Reproducible: no build time, user or host in the image.
export KBUILD_BUILD_TIMESTAMP=@0 KBUILD_BUILD_USER=caisson KBUILD_BUILD_HOST=caisson
k() { nice make -j"$(nproc)" ARCH=x86_64 "$@" >>"$log" 2>&1 ||
  { tail -40 "$log" >&2; echo "make $*: failed (log: $log)" >&2; exit 1; }; }
: >"$log"
k tinyconfig
echo "CONFIG_LOCALVERSION=\"$localversion\"" >"$build/caisson-release.frag"
scripts/kconfig/merge_config.sh -m .config "$here"/*.config "$build/caisson-release.frag" >>"$log" 2>&1
k olddefconfig

# Every option the fragments set must have come out as written (a missing
# dependency makes Kconfig drop it silently).
bad=0
while IFS= read -r line; do
  case $line in
    CONFIG_*=*) grep -qxF "$line" .config || { echo "kernel config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo unset)" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^$opt=" .config || { echo "kernel config: wanted $opt unset, got $(grep "^$opt=" .config)" >&2; bad=1; } ;;
  esac
done < <(cat "$here"/*.config)
[ "$bad" = 0 ] || exit 1

k vmlinux
built=$(cat include/config/kernel.release)
[ "$built" = "$release" ] || { echo "built $built, expected $release" >&2; exit 1; }

tmp=$cache/kernel-$key.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
cp vmlinux "$tmp/vmlinux"
cp .config "$tmp/config"
echo "$release" >"$tmp/kernel-release"
rm -rf "$done_dir"
mv "$tmp" "$done_dir"
echo "built $release in $(($(date +%s) - started)) s" >&2
echo "$done_dir"
