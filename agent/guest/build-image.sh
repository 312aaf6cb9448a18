#!/bin/bash
# Builds the microvm guest: two kernels and one initramfs.
# * vmlinux: Caisson's own minimal kernel (kernel/build-kernel.sh: tinyconfig
#   and kernel/*.config, everything built in), the default;
# * vmlinux-debian: the uncompressed vmlinux extracted from Debian's kernel
#   (the xz bzImage boots about 3x slower under TCG), whose drivers are
#   modules;
# * initramfs.cpio: deterministic newc holding caisson-agent as /init and the
#   Debian kernel's modules in /lib/modules/<release>/ (listed in its
#   caisson.order); the agent loads the list of the kernel it runs on, so one
#   initramfs serves both kernels.
#
#   build-image.sh AGENT_BINARY OUT_DIR CACHE_DIR
#
# Writes OUT_DIR/{vmlinux,kernel-release} (minimal), OUT_DIR/{vmlinux-debian,
# kernel-release-debian} and OUT_DIR/initramfs.cpio; each is replaced only
# when its content changes.
set -euo pipefail

agent=$1 out=$2 cache=$3

# The modules the guest needs, before their dependencies are added:
# the agent's channel (virtio-serial), the shared directory (virtio-9p),
# the PCI transport, and the NIC with its failover helpers.
MODULES="virtio_pci virtio_console 9p 9pnet_virtio virtio_net net_failover failover"

# The kernel Debian's linux-image-amd64 depends on (not a cloud kernel the
# host may boot, which lacks 9p); without that package, the newest in /boot.
release=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null |
  grep -oE 'linux-image-[0-9][^ ,]*' | head -1 | sed 's/^linux-image-//' || true)
if [ -n "$release" ] && [ -f "/boot/vmlinuz-$release" ]; then
  kernel=/boot/vmlinuz-$release
else
  kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
  [ -n "$kernel" ] || { echo "no /boot/vmlinuz-*: install linux-image-amd64 (make microvm-deps)" >&2; exit 1; }
  release=${kernel#/boot/vmlinuz-}
fi
[ -d "/lib/modules/$release" ] || { echo "no /lib/modules/$release for $kernel" >&2; exit 1; }

mkdir -p "$out" "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Installs $1 as $2 unless $2 already has the same bytes.
install_if_changed() {
  if ! cmp -s "$1" "$2"; then
    install -m 0644 "$1" "$2.tmp" && mv -f "$2.tmp" "$2"
  fi
}

# --- vmlinux: the first compressed payload in the bzImage that unpacks
# to an ELF file, as the kernel's scripts/extract-vmlinux does.
sum=$(sha256sum "$kernel" | cut -d' ' -f1)
vmlinux="$cache/vmlinux-$release-${sum:0:16}"
if [ ! -s "$vmlinux" ]; then
  try() { # $1 = magic (printf escapes), $2.. = decompressor
    local magic=$1; shift
    local off
    for off in $(LC_ALL=C grep -obUaP "$magic" "$kernel" | cut -d: -f1); do
      tail -c +$((off + 1)) "$kernel" | "$@" > "$tmp/vmlinux" 2>/dev/null || true
      if [ "$(head -c 4 "$tmp/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        return 0
      fi
    done
    return 1
  }
  try '\xfd7zXZ\x00' xz -dc || try '\x28\xb5\x2f\xfd' zstd -dcq || try '\x1f\x8b\x08' gzip -dc ||
    { echo "no xz, zstd or gzip payload that unpacks to an ELF vmlinux in $kernel" >&2; exit 1; }
  mv "$tmp/vmlinux" "$vmlinux.tmp" && mv "$vmlinux.tmp" "$vmlinux"
fi
install_if_changed "$vmlinux" "$out/vmlinux-debian"

# --- the minimal kernel (built once per config, cached).
minimal=$("$(dirname "$0")/kernel/build-kernel.sh" "$cache")
install_if_changed "$minimal/vmlinux" "$out/vmlinux"
install_if_changed "$minimal/kernel-release" "$out/kernel-release"

# --- modules, dependencies first (modinfo -F depends, recursively).
order=()
declare -A seen=()
add_module() {
  local name=$1 dep
  [ -z "${seen[$name]:-}" ] || return 0
  seen[$name]=1
  if grep -qE "/${name//_/[_-]}\.ko(\.[a-z]+)?$" "/lib/modules/$release/modules.builtin"; then
    return 0 # built into the kernel
  fi
  for dep in $(modinfo -k "$release" -F depends "$name" | tr ',' ' '); do
    add_module "$dep"
  done
  order+=("$name")
}
for m in $MODULES; do add_module "$m"; done

root=$tmp/root
modules=$root/lib/modules/$release
mkdir -p "$root"/{proc,sys,dev,run,tmp,etc} "$modules"
install -m 0755 "$agent" "$root/init"
: > "$modules/caisson.order"
for name in "${order[@]}"; do
  path=$(modinfo -k "$release" -n "$name")
  case $path in
    *.ko) cp "$path" "$modules/$name.ko" ;;
    *.ko.xz) xz -dc "$path" > "$modules/$name.ko" ;;
    *.ko.zst) zstd -dcq "$path" > "$modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" > "$modules/$name.ko" ;;
    *) echo "module $name: unexpected file $path" >&2; exit 1 ;;
  esac
  chmod 0644 "$modules/$name.ko"
  echo "$name.ko" >> "$modules/caisson.order"
done

# Deterministic: sorted names, mtime 0, owner root.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet --reproducible -o -H newc -R 0:0) > "$tmp/initramfs.cpio"
install_if_changed "$tmp/initramfs.cpio" "$out/initramfs.cpio"
echo "$release" > "$tmp/kernel-release"
install_if_changed "$tmp/kernel-release" "$out/kernel-release-debian"
echo "microvm guest: $out/vmlinux ($(cat "$out/kernel-release")), $out/vmlinux-debian ($release)," \
  "$out/initramfs.cpio ($(stat -c %s "$out/initramfs.cpio") bytes; modules for $release: ${order[*]})"
