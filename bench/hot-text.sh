#!/usr/bin/env bash
# Regenerates sandbox/hot-text.ld: the shim's functions that a pod's life runs,
# laid out together at the start of its text (see that file's header).
#
# Which functions run is read from the page cache, not sampled: the shim is
# built once with every function aligned to its own 4 KiB page, copied to a
# scratch ext4 on a loop device with readahead off (so a page is cached only
# when a process touched it), and the benchmarks' pods run on it. mincore(2)
# then names the touched pages, and so the functions. A function's pattern
# leaves out its symbol's hash, so the list survives rebuilds and dependency
# bumps; what it misses (new or renamed functions) is only laid out as before.
#
# Needs root, containerd, runc and what `caisson-bench shim`, `cri --cni`,
# `streaming` and `hardened` need; bench/hot-text.py reads the page cache
# and writes the script.
# Usage: bench/hot-text.sh [scratch dir, default /var/tmp/caisson-hot-text]
# The scratch dir keeps the profiling build (about 3 GB, reused by the next
# run) and the benchmarks' output; the loop device and its image are removed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/var/tmp/caisson-hot-text}
mkdir -p "$work"
loop=""
cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -f "$work/fs.img"
}
trap cleanup EXIT

cd "$repo"
cargo build --release -p caisson-shim -p caisson-bench
cargo build --release --manifest-path pause/Cargo.toml
(cd probe && cargo build --release)
# The profiling shim: the release shim's static build (the Makefile's
# static-shim) with every function at a page boundary, and the linker's map
# (where each archive member's code went), in its own target dir.
CARGO_TARGET_DIR="$work/target" make static-shim \
  SHIM_RUSTFLAGS="-C llvm-args=-align-all-functions=12 -C link-arg=-Wl,-Map=$work/shim.map"

truncate -s 2G "$work/fs.img"
mkfs.ext4 -q -F "$work/fs.img"
loop=$(losetup -f --show "$work/fs.img")
mkdir -p "$work/mnt"
mount "$loop" "$work/mnt"
echo 0 > "/sys/block/$(basename "$loop")/queue/read_ahead_kb"
bin="$work/mnt/bin"
mkdir "$bin"
# The bench finds caissond, the shim and caisson-pause beside itself.
cp target/release/caisson-bench target/release/caissond "$bin/"
cp pause/target/release/caisson-pause "$bin/"
profiled="$work/target/$(rustc -vV | sed -n 's/^host: //p')/release/containerd-shim-caisson-v2"
cp "$profiled" "$bin/"
# Each pod's fork server (and what it clones: libcontainer's processes) runs
# from a second copy, so that each file's cached pages are one side's: the
# shim's server, which lives as long as its pod, and its builds.
mkdir "$bin/fork-server"
cp "$profiled" "$bin/fork-server/"
export CAISSON_SHIM_FORK_SERVER_BINARY="$bin/fork-server/containerd-shim-caisson-v2"
sync
# Remounting empties the page cache of everything on it.
umount "$work/mnt"
mount "$loop" "$work/mnt"

# Three tiers: what every pod's shim server runs, what its builds add, then
# what only a hardened pod's adds, so that a native shim server's
# fault-around windows hold none of the others.
"$bin/caisson-bench" shim --runs 20 > "$work/shim.txt"
# --density: the pods also answer kubelet's stats calls (ListContainerStats).
"$bin/caisson-bench" cri --cni --runs 5 --density 3 --phases > "$work/cri.txt"
"$bin/caisson-bench" streaming --runs 10 --forwards 1 --size-mb 4 > "$work/streaming.txt"
python3 bench/hot-text.py snapshot "$bin/containerd-shim-caisson-v2" "$work/server.pages"
python3 bench/hot-text.py snapshot "$CAISSON_SHIM_FORK_SERVER_BINARY" "$work/builds.pages"
"$bin/caisson-bench" hardened --runs 5 --pods 2 --reps 1 > "$work/hardened.txt"
python3 bench/hot-text.py snapshot "$bin/containerd-shim-caisson-v2" "$work/hardened-server.pages"
python3 bench/hot-text.py snapshot "$CAISSON_SHIM_FORK_SERVER_BINARY" "$work/hardened-builds.pages"
sort -nu "$work/hardened-server.pages" "$work/hardened-builds.pages" > "$work/hardened.pages"
python3 bench/hot-text.py generate "$bin/containerd-shim-caisson-v2" "$work/shim.map" sandbox/hot-text.ld \
  "$work/server.pages" "$work/builds.pages" "$work/hardened.pages"
