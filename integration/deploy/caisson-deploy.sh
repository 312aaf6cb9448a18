#!/bin/sh
# caisson-deploy.sh: puts Caisson on a node and takes it off again, as
# kata-deploy does for Kata. Plain POSIX sh (dash, busybox ash); runs on a node
# directly or from the DaemonSet in caisson-deploy.yaml (with --root /host).
#
#   caisson-deploy.sh install|uninstall [--root DIR] [--mode containerd|caissond]
#                     [--restart-containerd yes|no] [--start yes|no] [--from DIR]
#                     [--containerd-config PATH]
#
# install copies the release binaries (caissond, containerd-shim-caisson-v2 and
# its containerd-shim-caisson-hardened-v2 and -microvm-v2 symlinks,
# caisson-pause) into
# DIR/usr/local/bin and the default config to DIR/etc/caisson/caisson.toml
# (an existing config is kept), then
#   * containerd mode: appends the runtime handlers `caisson`,
#     `caisson-hardened` and `caisson-microvm` to containerd's config
#     (version 2: containerd 1.6/1.7;
#     version 3: containerd 2.x) as one marked block, after keeping a copy of
#     the file, and restarts containerd when allowed;
#   * caissond mode: installs caissond.service and starts caissond (systemd),
#     or starts caissond in the background where there is no systemd;
# and labels the node (caisson.io/runtime=true, caisson.io/mode=<mode>) when
# run in a pod with a kubeconfig or service account and NODE_NAME set.
#
# uninstall undoes exactly that: containerd's config comes back byte for byte
# from the copy (or, if someone edited it since, loses only the marked block),
# every file and directory install added is removed, every file it replaced is
# put back. What install did is recorded in DIR/etc/caisson/deploy/.
set -eu

PROG=caisson-deploy.sh
BEGIN_MARK='# BEGIN caisson (added by caisson-deploy.sh; `caisson-deploy.sh uninstall` removes it)'
END_MARK='# END caisson'
LABEL=caisson.io/runtime
MODE_LABEL=caisson.io/mode

die() {
	echo "$PROG: $*" >&2
	exit 1
}
say() { echo "$PROG: $*"; }

usage() {
	sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[ $# -ge 1 ] || usage
ACTION=$1
shift
case $ACTION in install | uninstall) ;; -h | --help) usage ;; *) usage ;; esac

ROOT=/
MODE=containerd
RESTART=yes
START=yes
FROM=
CTRD_CONFIG=/etc/containerd/config.toml
while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || die "$1 needs a value"
	case $1 in
	--root) ROOT=$2 ;;
	--mode) MODE=$2 ;;
	--restart-containerd) RESTART=$2 ;;
	--start) START=$2 ;;
	--from) FROM=$2 ;;
	--containerd-config) CTRD_CONFIG=$2 ;;
	*) die "unknown option $1" ;;
	esac
	shift 2
done
case $MODE in containerd | caissond) ;; *) die "--mode is containerd or caissond, not $MODE" ;; esac
case $RESTART in yes | no) ;; *) die "--restart-containerd is yes or no, not $RESTART" ;; esac
case $START in yes | no) ;; *) die "--start is yes or no, not $START" ;; esac
case $CTRD_CONFIG in /*) ;; *) die "--containerd-config is a path on the node, from /: $CTRD_CONFIG" ;; esac
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd -P)
[ "$ROOT" = / ] && ROOT=

BIN=/usr/local/bin
STATE=/etc/caisson/deploy
UNIT=/etc/systemd/system/caissond.service
HERE=$(cd "$(dirname "$0")" && pwd -P)

# --- what install did, kept in $ROOT$STATE ---------------------------------
# added:    node paths of the files and links install made (removed by uninstall)
# replaced: node paths of files that were there before (kept under backup/)
# dirs:     directories install made, outermost first (removed if empty)
# containerd-config.{path,orig,installed,existed}: the containerd edit
# mode, started: what to stop

# Makes directory $1 (a node path) and its missing parents, recording them.
make_dir() {
	missing=
	d=$1
	while [ -n "$d" ] && [ "$d" != / ] && [ ! -d "$ROOT$d" ]; do
		missing="$d
$missing"
		d=$(dirname "$d")
	done
	[ -z "$missing" ] && return 0
	mkdir -p "$ROOT$1"
	printf '%s' "$missing" >>"$ROOT$STATE/dirs"
}

in_list() { [ -f "$ROOT$STATE/$2" ] && grep -qxF "$1" "$ROOT$STATE/$2"; }

# Installs file $1 at node path $2 with mode $3, keeping what was there.
place_file() {
	make_dir "$(dirname "$2")"
	if [ -e "$ROOT$2" ] || [ -L "$ROOT$2" ]; then
		if ! in_list "$2" added && ! in_list "$2" replaced; then
			make_dir "$STATE/backup$(dirname "$2")"
			cp -pP "$ROOT$2" "$ROOT$STATE/backup$2"
			echo "$2" >>"$ROOT$STATE/replaced"
		fi
	fi
	in_list "$2" added || in_list "$2" replaced || echo "$2" >>"$ROOT$STATE/added"
	rm -f "$ROOT$2.caisson-new"
	cp "$1" "$ROOT$2.caisson-new"
	chmod "$3" "$ROOT$2.caisson-new"
	mv -f "$ROOT$2.caisson-new" "$ROOT$2"
}

# Makes symlink $2 (node path) pointing at $1.
place_link() {
	if [ -e "$ROOT$2" ] || [ -L "$ROOT$2" ]; then
		if ! in_list "$2" added && ! in_list "$2" replaced; then
			make_dir "$STATE/backup$(dirname "$2")"
			cp -pP "$ROOT$2" "$ROOT$STATE/backup$2"
			echo "$2" >>"$ROOT$STATE/replaced"
		fi
		rm -f "$ROOT$2"
	fi
	in_list "$2" added || in_list "$2" replaced || echo "$2" >>"$ROOT$STATE/added"
	ln -s "$1" "$ROOT$2"
}

# --- systemd and containerd -------------------------------------------------

# Runs a command in the node's mount namespace when we are in a pod that
# sees the node under --root (hostPID: PID 1 is the node's init).
on_node() {
	if [ -z "$ROOT" ]; then
		"$@"
	else
		nsenter -t 1 -m -- "$@"
	fi
}

has_systemd() {
	[ -d "$ROOT/run/systemd/system" ] || return 1
	[ -z "$ROOT" ] || command -v nsenter >/dev/null 2>&1 || return 1
	on_node systemctl --version >/dev/null 2>&1
}

restart_containerd() {
	say "restarting containerd"
	on_node systemctl restart containerd || die "systemctl restart containerd failed"
}

# The config's `version`: the first top-level `version = N` before any table.
config_version() {
	awk '
		/^[ \t]*\[/ { exit }
		/^[ \t]*version[ \t]*=/ { v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t#].*$/, "", v); print v; exit }
	' "$1"
}

# The CRI plugin's runtimes table prefix for config version $1.
runtimes_prefix() {
	case $1 in
	2) echo 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes' ;;
	3) echo 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes' ;;
	esac
}

# Lines of $1 outside comments that declare a runtime named caisson,
# caisson-hardened or caisson-microvm (as a table or a dotted key), or the
# runtimes map inline.
conflicts() {
	sed 's/#.*$//' "$1" | grep -nE \
		-e "runtimes\\.[\"']?caisson(-hardened|-microvm)?[\"']?[[:space:]]*[].=]" \
		-e 'runtimes[[:space:]]*=' || true
}

# The block appended to a config of version $1 ($2: also declare runc).
config_block() {
	p=$(runtimes_prefix "$1")
	echo "$BEGIN_MARK"
	if [ "$2" = yes ]; then
		echo '# Declaring a runtime replaces containerd'"'"'s built-in list: runc again.'
		echo "[$p.runc]"
		echo '  runtime_type = "io.containerd.runc.v2"'
		echo
	fi
	echo "[$p.caisson]"
	echo '  runtime_type = "io.containerd.caisson.v2"'
	echo
	echo "[$p.caisson-hardened]"
	echo '  runtime_type = "io.containerd.caisson-hardened.v2"'
	echo
	echo "[$p.caisson-microvm]"
	echo '  runtime_type = "io.containerd.caisson-microvm.v2"'
	echo "$END_MARK"
}

# Refuses, before anything is changed, a containerd config this script
# cannot edit safely; sets VERSION and EXISTED.
check_containerd_config() {
	cfg=$ROOT$CTRD_CONFIG
	if [ -f "$cfg" ]; then
		VERSION=$(config_version "$cfg")
		case $VERSION in
		2 | 3) ;;
		'') die "$CTRD_CONFIG has no 'version = 2' or 'version = 3': migrate it first (containerd config migrate)" ;;
		*) die "$CTRD_CONFIG is config version $VERSION; only versions 2 (containerd 1.6/1.7) and 3 (2.x) are supported" ;;
		esac
		found=$(conflicts "$cfg")
		if [ -n "$found" ]; then
			die "$CTRD_CONFIG already declares a runtime named caisson, caisson-hardened or caisson-microvm, or the runtimes inline; refusing to edit it. Remove these lines or merge integration/containerd/config.toml by hand:
$found"
		fi
		EXISTED=yes
	else
		VERSION=2
		EXISTED=no
	fi
}

# Registers the handlers in containerd's config (node path $CTRD_CONFIG);
# EDITED=yes if it changed the file.
edit_containerd_config() {
	EDITED=no
	cfg=$ROOT$CTRD_CONFIG
	st=$ROOT$STATE
	if [ -f "$st/containerd-config.path" ]; then
		grep -qxF "$BEGIN_MARK" "$cfg" 2>/dev/null ||
			die "$CTRD_CONFIG lost the caisson block since install: run uninstall first"
		say "$CTRD_CONFIG already has the caisson handlers"
		return 0
	fi
	check_containerd_config
	runc=no
	if [ "$EXISTED" = no ] || ! sed 's/#.*$//' "$cfg" | grep -qE 'containerd\.runtimes\.'; then
		runc=yes
	fi

	make_dir "$(dirname "$CTRD_CONFIG")"
	echo "$CTRD_CONFIG" >"$st/containerd-config.path"
	echo "$EXISTED" >"$st/containerd-config.existed"
	new=$cfg.caisson-new
	rm -f "$new"
	if [ "$EXISTED" = yes ]; then
		cp -p "$cfg" "$st/containerd-config.orig"
		cp -p "$cfg" "$new"
		# A file not ending in a newline gets one before the block: the
		# backup, not the block's removal, gives the original back.
		[ ! -s "$cfg" ] || [ -z "$(tail -c 1 "$cfg")" ] || echo >>"$new"
		[ ! -s "$cfg" ] || echo >>"$new"
	else
		echo 'version = 2' >"$new"
		echo >>"$new"
	fi
	config_block "$VERSION" "$runc" >>"$new"
	cp -p "$new" "$st/containerd-config.installed"
	mv -f "$new" "$cfg"
	EDITED=yes
	say "registered runtime handlers caisson, caisson-hardened and caisson-microvm in $CTRD_CONFIG (config version $VERSION)"
}

# Puts containerd's config back; RESTORED=yes if there was an edit to undo.
restore_containerd_config() {
	RESTORED=no
	st=$ROOT$STATE
	[ -f "$st/containerd-config.path" ] || return 0
	path=$(cat "$st/containerd-config.path")
	cfg=$ROOT$path
	existed=$(cat "$st/containerd-config.existed")
	if [ -f "$cfg" ] && ! cmp -s "$cfg" "$st/containerd-config.installed"; then
		# Edited since install: keep those edits, drop only our block.
		say "$path changed since install: removing only the caisson block"
		awk -v b="$BEGIN_MARK" -v e="$END_MARK" \
			'$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$cfg" >"$cfg.caisson-new"
		cat "$cfg.caisson-new" >"$cfg"
		rm -f "$cfg.caisson-new"
	elif [ "$existed" = yes ]; then
		cp -p "$st/containerd-config.orig" "$cfg.caisson-new"
		mv -f "$cfg.caisson-new" "$cfg"
		say "restored $path"
	else
		rm -f "$cfg"
		say "removed $path (install created it)"
	fi
	rm -f "$st/containerd-config.path" "$st/containerd-config.existed" \
		"$st/containerd-config.orig" "$st/containerd-config.installed"
	RESTORED=yes
}

# --- caissond ---------------------------------------------------------------

start_caissond() {
	if has_systemd; then
		on_node systemctl daemon-reload
		on_node systemctl enable --now caissond.service
		echo systemd >"$ROOT$STATE/started"
		say "caissond started (systemd unit caissond.service)"
	else
		# No systemd: run it in the background, detached; only on the node
		# itself (a pod sees just the node's directories it mounts).
		[ -z "$ROOT" ] || die "no systemd on the node to start caissond: pass --start no and start it yourself"
		make_dir /run/caisson
		setsid "$BIN/caissond" --config /etc/caisson/caisson.toml \
			>>/run/caisson/caissond.log 2>&1 </dev/null &
		echo "pid $!" >"$ROOT$STATE/started"
		say "caissond started in the background (pid $!, log /run/caisson/caissond.log)"
	fi
}

stop_caissond() {
	[ -f "$ROOT$STATE/started" ] || return 0
	how=$(cat "$ROOT$STATE/started")
	case $how in
	systemd)
		on_node systemctl disable --now caissond.service || true
		;;
	pid\ *)
		pid=${how#pid }
		kill "$pid" 2>/dev/null || true
		;;
	esac
	rm -f "$ROOT$STATE/started"
	say "caissond stopped"
}

# --- the node label ---------------------------------------------------------

# kubectl label, only from a pod (or a shell) with credentials and NODE_NAME.
label_node() {
	if [ -z "${NODE_NAME:-}" ] || ! command -v kubectl >/dev/null 2>&1 ||
		{ [ -z "${KUBECONFIG:-}" ] && [ ! -f /var/run/secrets/kubernetes.io/serviceaccount/token ]; }; then
		say "not labelling the node (needs NODE_NAME, kubectl and a kubeconfig or service account)"
		return 0
	fi
	if [ "$1" = add ]; then
		kubectl label node "$NODE_NAME" --overwrite "$LABEL=true" "$MODE_LABEL=$MODE"
	else
		kubectl label node "$NODE_NAME" "$LABEL-" "$MODE_LABEL-" || true
	fi
}

# --- install / uninstall ------------------------------------------------------

find_from() {
	if [ -z "$FROM" ]; then
		if [ -d "$HERE/bin" ]; then FROM=$HERE/bin; else FROM=$HERE; fi
	fi
	for b in caissond containerd-shim-caisson-v2 caisson-pause; do
		[ -f "$FROM/$b" ] || die "$FROM/$b not found: pass --from the directory of the release binaries (make release: target/release)"
	done
}

install() {
	find_from
	if [ "$MODE" = containerd ] && [ "$RESTART" = yes ] && ! has_systemd; then
		die "cannot restart containerd here (no systemd on the node$([ -n "$ROOT" ] && echo ', or no nsenter with hostPID')); pass --restart-containerd no and restart containerd yourself"
	fi
	if [ "$MODE" = caissond ] && [ "$START" = yes ] && [ -n "$ROOT" ] && ! has_systemd; then
		die "no systemd on the node to start caissond: pass --start no and start it yourself"
	fi
	if [ -f "$ROOT$STATE/mode" ] && [ "$(cat "$ROOT$STATE/mode")" != "$MODE" ]; then
		die "installed in $(cat "$ROOT$STATE/mode") mode: uninstall first"
	fi
	if [ "$MODE" = containerd ] && [ ! -f "$ROOT$STATE/containerd-config.path" ]; then
		check_containerd_config
	fi
	make_dir "$STATE"
	echo "$MODE" >"$ROOT$STATE/mode"

	place_file "$FROM/caissond" "$BIN/caissond" 0755
	place_file "$FROM/containerd-shim-caisson-v2" "$BIN/containerd-shim-caisson-v2" 0755
	place_link containerd-shim-caisson-v2 "$BIN/containerd-shim-caisson-hardened-v2"
	place_link containerd-shim-caisson-v2 "$BIN/containerd-shim-caisson-microvm-v2"
	place_file "$FROM/caisson-pause" "$BIN/caisson-pause" 0755
	if [ ! -e "$ROOT/etc/caisson/caisson.toml" ] || in_list /etc/caisson/caisson.toml added; then
		if [ -f "$FROM/caisson.toml" ]; then
			place_file "$FROM/caisson.toml" /etc/caisson/caisson.toml 0644
		else
			make_dir "$STATE/tmp"
			"$FROM/caissond" --print-default-config >"$ROOT$STATE/tmp/caisson.toml"
			place_file "$ROOT$STATE/tmp/caisson.toml" /etc/caisson/caisson.toml 0644
			rm -f "$ROOT$STATE/tmp/caisson.toml"
		fi
	else
		say "keeping the existing /etc/caisson/caisson.toml"
	fi
	say "installed caissond, containerd-shim-caisson-v2 (+ hardened and microvm links), caisson-pause in $BIN"

	if [ "$MODE" = containerd ]; then
		edit_containerd_config
		if [ "$EDITED" = yes ] && [ "$RESTART" = yes ]; then
			restart_containerd
		elif [ "$EDITED" = yes ]; then
			say "containerd not restarted (--restart-containerd no): restart it to load the handlers"
		fi
	else
		if [ -f "$HERE/../systemd/caissond.service" ]; then unit_src=$HERE/../systemd/caissond.service; else unit_src=$HERE/caissond.service; fi
		[ -f "$unit_src" ] || die "caissond.service not found beside $0"
		place_file "$unit_src" "$UNIT" 0644
		if [ "$START" = yes ]; then
			stop_caissond
			start_caissond
		fi
	fi
	label_node add
	say "install done ($MODE mode, root ${ROOT:-/})"
}

uninstall() {
	st=$ROOT$STATE
	if [ ! -d "$st" ]; then
		say "nothing to uninstall under ${ROOT:-/} ($STATE not found)"
		return 0
	fi
	MODE=$(cat "$st/mode" 2>/dev/null || echo "$MODE")
	label_node remove
	stop_caissond
	restore_containerd_config
	if [ "$RESTORED" = yes ]; then
		if [ "$RESTART" = yes ] && has_systemd; then
			restart_containerd
		else
			say "containerd not restarted: restart it to drop the handlers"
		fi
	fi
	if [ -f "$st/added" ]; then
		while IFS= read -r f; do
			[ -n "$f" ] && rm -f "$ROOT$f"
		done <"$st/added"
	fi
	if [ -f "$st/replaced" ]; then
		while IFS= read -r f; do
			[ -n "$f" ] || continue
			rm -f "$ROOT$f"
			cp -pP "$st/backup$f" "$ROOT$f"
		done <"$st/replaced"
	fi
	# Directories: innermost first, each only if empty.
	dirs=$(cat "$st/dirs" 2>/dev/null || true)
	rm -rf "$st"
	if [ -n "$dirs" ]; then
		echo "$dirs" | sed '1!G;h;$!d' | while IFS= read -r d; do
			[ -n "$d" ] && [ -d "$ROOT$d" ] && rmdir "$ROOT$d" 2>/dev/null || true
		done
	fi
	say "uninstall done (root ${ROOT:-/})"
}

$ACTION
