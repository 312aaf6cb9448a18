# Caisson's single entry point. `make test` is what CI runs: it installs what
# is missing (Debian packages), checks formatting and lints, builds both
# workspaces (the main one and pause/), and runs every test. Run it as root:
# the tests make namespaces, mounts and device nodes.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

# Debian packages the build and the tests use.
DEB_PACKAGES := protobuf-compiler libseccomp-dev busybox-static skopeo umoci tar gzip util-linux containerd runc crun runsc docker-registry apache2-utils openssl containernetworking-plugins iproute2 iptables python3-grpcio python3-venv golang-go golang-google-grpc-dev systemd

# CheckpointContainer runs CRIU. Debian bookworm's criu 3.17 cannot dump on
# kernels that map [vvar_vclock] (6.13 and later: "vdso: Unexpected rt vDSO
# area bounds"); trixie's 4.1.1 source builds on bookworm. `make criu` builds
# it once into a cache outside the clone, keyed by version, from the
# machine's own Debian mirror (the first URIs: line of its apt sources).
CRIU_VERSION := 4.1.1
CRIU_SHA256 := f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_CACHE ?= /var/cache/caisson-test/criu-$(CRIU_VERSION)
# What criu/criu is built and linked with (protoc-c, descriptor.proto, and
# the libraries ldd shows); crit's python3-protobuf is not needed.
CRIU_BUILD_DEPS := protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev libnl-3-dev libnet1-dev libcap-dev pkg-config libbsd-dev uuid-dev libnftables-dev libgnutls28-dev xz-utils
DEB_PACKAGES += $(CRIU_BUILD_DEPS)

.PHONY: all deps deps-apt python-deps microvm-deps agent microvm-kernel microvm-guest build release static-shim run lint test test-pause criu bench fuzz chaos churn clean

all: build

deps-apt:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The interop tests' second gRPC implementation: Debian's python3-grpcio
# (gRPC's C core) in a venv that adds grpcio-tools from PyPI to generate the
# CRI stubs. Kept outside the clone; remade when the pin changes.
PY_GRPC_VENV := /var/cache/caisson-test/py-grpc
PY_GRPC_TOOLS := grpcio-tools==1.51.1 kubernetes==37.0.3 prometheus-client==0.26.0 kubernetes-validate==1.37.0

deps: python-deps

python-deps: deps-apt
	@if [ "$$(cat $(PY_GRPC_VENV)/.caisson-pin 2>/dev/null)" != "$(PY_GRPC_TOOLS)" ]; then \
	  echo "making $(PY_GRPC_VENV) ($(PY_GRPC_TOOLS))"; \
	  rm -rf $(PY_GRPC_VENV) && \
	  /usr/bin/python3 -m venv --system-site-packages $(PY_GRPC_VENV) && \
	  $(PY_GRPC_VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_GRPC_TOOLS) && \
	  echo '$(PY_GRPC_TOOLS)' > $(PY_GRPC_VENV)/.caisson-pin; \
	fi

# The microvm backend's VMM and guest kernel. bookworm's qemu-system-x86
# (7.2) conflicts with the qemu-utils 10 these machines have from
# bookworm-backports, so QEMU comes from bookworm-backports too: that source
# is derived from the machine's own debian.sources (its first URIs: and
# Signed-By:), never written here. The guest kernels are bookworm's own
# linux-image-amd64 (6.1), not the backports one, and Caisson's minimal
# kernel built from bookworm's linux-source-6.1 (with what building it takes).
MICROVM_PACKAGES := qemu-system-x86 linux-image-amd64 cpio xz-utils linux-source-6.1 gcc make flex bison bc libelf-dev
MICROVM_BACKPORTS := /etc/apt/sources.list.d/caisson-backports.sources

microvm-deps: deps-apt
	@set -e; \
	if [ ! -f $(MICROVM_BACKPORTS) ]; then \
	  uri=$$(awk '/^URIs:/ {print $$2; exit}' /etc/apt/sources.list.d/debian.sources); \
	  key=$$(awk '/^Signed-By:/ {print $$2; exit}' /etc/apt/sources.list.d/debian.sources); \
	  [ -n "$$uri" ] || { echo "no URIs: line in /etc/apt/sources.list.d/debian.sources"; exit 1; }; \
	  { printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n' "$$uri"; \
	    if [ -n "$$key" ]; then printf 'Signed-By: %s\n' "$$key"; fi; } > $(MICROVM_BACKPORTS).tmp; \
	  mv $(MICROVM_BACKPORTS).tmp $(MICROVM_BACKPORTS); \
	  echo "wrote $(MICROVM_BACKPORTS) ($$uri bookworm-backports)"; \
	  apt-get update -qq; \
	fi; \
	missing=""; \
	for p in $(MICROVM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-cache policy qemu-system-x86 | grep -q bookworm-backports || apt-get update -qq; \
	  case " $$missing " in *" qemu-system-x86 "*) \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      -t bookworm-backports qemu-system-x86;; esac; \
	  rest=$$(echo "$$missing" | tr ' ' '\n' | grep -vx 'qemu-system-x86' | tr '\n' ' '); \
	  if [ -n "$${rest// /}" ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$rest; \
	  fi; \
	fi

# caisson-agent, the microvm guest's /init: static, its own workspace (as probe/).
AGENT_BIN := agent/target/x86_64-unknown-linux-gnu/release/caisson-agent

agent: deps-apt
	cd agent && $(CARGO) build --release

# The guest kernels and the initramfs, where the microvm handler looks by
# default: Caisson's minimal kernel (agent/guest/kernel/: tinyconfig and the
# fragments there, everything built in; built once per config into the
# cache: about 11 minutes on 2 cores), Debian's (the uncompressed vmlinux
# extracted from the bzImage linux-image-amd64 depends on, cached by release
# and sha256), and one initramfs for both (the agent as /init and the Debian
# kernel's modules; deterministic). See agent/README.md.
MICROVM_DIR ?= /var/lib/caisson/microvm
MICROVM_CACHE ?= /var/cache/caisson-test/microvm

microvm-kernel: microvm-deps
	agent/guest/kernel/build-kernel.sh $(MICROVM_CACHE)

microvm-guest: microvm-deps agent microvm-kernel
	agent/guest/build-image.sh $(AGENT_BIN) $(MICROVM_DIR) $(MICROVM_CACHE)

build: deps microvm-guest
	$(CARGO) build --release --manifest-path pause/Cargo.toml
	cd probe && $(CARGO) build --release
	$(CARGO) build --workspace --all-targets

# Release binaries side by side: caissond finds the shim and caisson-pause beside itself.
release: deps-apt static-shim
	$(CARGO) build --release --manifest-path pause/Cargo.toml
	$(CARGO) build --release -p caisson-shim
	install -m 0755 pause/target/release/caisson-pause target/release/caisson-pause
	rm -f target/release/containerd-shim-caisson-v2
	install -m 0755 $(STATIC_SHIM) target/release/containerd-shim-caisson-v2

# The release shim is linked statically (glibc, libseccomp, libgcc): a pod's
# shim maps no shared library, whose pages the kernel's fault-around would
# map 64 KiB at a time around each call (1.6 MB of each shim's RSS), and the
# libc code it runs is laid out with its own (sandbox/hot-text.ld names the
# archive members). crt-static needs an explicit --target, so that build
# scripts and proc-macros stay dynamic: its own build, beside the host one.
# SHIM_RUSTFLAGS adds flags (bench/hot-text.sh's profiling build).
HOST_TARGET := $(shell PATH="$(PATH)" rustc -vV 2>/dev/null | sed -n 's/^host: //p')
STATIC_SHIM = target/$(HOST_TARGET)/release/containerd-shim-caisson-v2
SHIM_RUSTFLAGS ?=
static-shim: deps-apt
	RUSTFLAGS="-C symbol-mangling-version=v0 -C target-feature=+crt-static $(SHIM_RUSTFLAGS)" \
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/$$(gcc -print-multiarch) \
	  $(CARGO) build --release --target $(HOST_TARGET) -p caisson-sandbox --bin containerd-shim-caisson-v2

# Starts caissond with its embedded default config (socket /run/caisson/caissond.sock).
run: release
	exec target/release/caissond

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path pause/Cargo.toml --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p caisson-cgroups --test v2_guest_root -- -D warnings
	$(CARGO) clippy --manifest-path pause/Cargo.toml --all-targets -- -D warnings
	cd probe && $(CARGO) fmt --check && $(CARGO) clippy --all-targets -- -D warnings
	cd agent && $(CARGO) fmt --check && $(CARGO) clippy --all-targets -- -D warnings

criu: deps-apt
	@if [ -x $(CRIU_CACHE)/criu ]; then exit 0; fi; \
	set -e; \
	uri=$$(awk '/^URIs:/ {print $$2; exit}' /etc/apt/sources.list.d/debian.sources); \
	tmp=$$(mktemp -d); chmod 755 "$$tmp"; trap 'rm -rf "$$tmp"' EXIT; \
	echo "building CRIU $(CRIU_VERSION) into $(CRIU_CACHE)"; \
	/usr/lib/apt/apt-helper download-file "$$uri/pool/main/c/criu/criu_$(CRIU_VERSION).orig.tar.xz" \
	  "$$tmp/criu.tar.xz" SHA256:$(CRIU_SHA256); \
	tar -xJf "$$tmp/criu.tar.xz" -C "$$tmp"; \
	$(MAKE) -C "$$tmp/criu-$(CRIU_VERSION)" -j2 criu > "$$tmp/build.log" 2>&1 || \
	  { tail -30 "$$tmp/build.log"; exit 1; }; \
	mkdir -p $(CRIU_CACHE); \
	install -m 0755 "$$tmp/criu-$(CRIU_VERSION)/criu/criu" $(CRIU_CACHE)/criu.tmp; \
	mv $(CRIU_CACHE)/criu.tmp $(CRIU_CACHE)/criu; \
	$(CRIU_CACHE)/criu --version

test-pause: deps
	$(CARGO) test --manifest-path pause/Cargo.toml --release

# No incremental caches for a one-off full run: they would add about a third
# to the target dir, and CI's disk is small.
test: export CARGO_INCREMENTAL := 0
test: lint build test-pause criu static-shim
	cd agent && $(CARGO) test --release
	$(CARGO) test --workspace
	CAISSON_TEST_SHIM=$(CURDIR)/$(STATIC_SHIM) $(CARGO) test --workspace --test hot_text $(RELEASE_SHIM_TESTS)

# The release shim is a static build (static-shim) that the debug tests
# never run: these run again with it as every pod's shim (each backend,
# exec and attach, logs, checkpoint, recovery; about 2.5 minutes), and
# hot_text checks its layout. --workspace, not -p: the same features as the
# run before, so nothing is rebuilt.
RELEASE_SHIM_TESTS := --test cri_smoke_root --test cri_pods_root --test cri_containers_root \
  --test cri_hardened_root --test cri_userns_root --test cri_seccomp_root --test cri_oci_root \
  --test cri_runsc_root --test cri_microvm_root --test cri_streaming_root \
  --test cri_streaming_sessions_root --test cri_logs_root --test cri_limits_root --test cri_qos_root \
  --test cri_checkpoint_root --test cri_recovery_root --test cri_shim_death_root

bench: release criu microvm-guest
	$(CARGO) build --release -p caisson-bench
	cd probe && $(CARGO) build --release
	target/release/caisson-bench image-import
	target/release/caisson-bench shim
	target/release/caisson-bench cri
	target/release/caisson-bench hardened
	target/release/caisson-bench pull
	target/release/caisson-bench streaming
	target/release/caisson-bench checkpoint
	target/release/caisson-bench microvm

# Fuzzing, beside `make test` (which replays fuzz/corpus and
# fuzz/regressions through fuzz/tests/replay.rs): every target for
# FUZZ_SECONDS under libFuzzer (cargo-fuzz, the nightly toolchain, the
# address sanitizer), starting from the seeds in fuzz/corpus/<target>/. New
# inputs are kept in fuzz/libfuzzer/corpus/ (not committed); a crash is saved
# in fuzz/libfuzzer/artifacts/<target>/: fix it and keep the input in
# fuzz/regressions/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := layer_tar image_archive reference manifest cri_pod cri_container caissond_config cni_result cri_log
CARGO_FUZZ_VERSION := 0.13.2

fuzz: deps-apt
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@$(CARGO) fuzz --version 2>/dev/null | grep -q ' $(CARGO_FUZZ_VERSION)$$' || $(CARGO) install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/libfuzzer/corpus/$$t && \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s" && \
	  $(CARGO) +nightly fuzz run --fuzz-dir fuzz/libfuzzer $$t fuzz/libfuzzer/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 2>&1 | \
	    grep --line-buffered -E '^(stat::|==|SUMMARY|Done|INFO: (Running|Loaded|seed))|panicked|Failing input|artifact' ; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done

# The chaos harness's long run (tests/src/chaos.rs): CHAOS_FAULTS faults
# (caissond, shim and container-init SIGKILLs, the state tmpfs filled)
# under three kubelet-like clients, the kernel checked after each; replay
# a run with its CHAOS_SEED. `make test` runs it short (20 faults, seed 19).
CHAOS_FAULTS ?= 1000
CHAOS_SEED ?= $(shell date +%s)
# Churn: CHURN_PODS pods one by one, then 20 at a time (`make test`: 60).
CHURN_PODS ?= 1000

chaos: build
	CAISSON_CHAOS_FAULTS=$(CHAOS_FAULTS) CAISSON_CHAOS_SEED=$(CHAOS_SEED) \
	  $(CARGO) test -p caisson-tests --test chaos_root -- --nocapture chaos_finds_no_violation

churn: build
	CAISSON_CHURN_PODS=$(CHURN_PODS) \
	  $(CARGO) test -p caisson-tests --test churn_root -- --nocapture churn_sequential

clean:
	$(CARGO) clean
	$(CARGO) clean --manifest-path pause/Cargo.toml
	cd probe && $(CARGO) clean
	cd agent && $(CARGO) clean
