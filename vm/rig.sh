#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run indirectly (with_lock, traps)
# dmaplace qemu rig: boots real Linux kernels under qemu (TCG) and runs static
# test binaries inside them. See docs/VM.md.
set -eEuo pipefail
on_err() { echo "[rig] ERROR: \"$BASH_COMMAND\" failed with status $2 (vm/rig.sh line $1)" >&2; }
trap 'on_err $LINENO $?' ERR

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$RIG_DIR/.." && pwd)
CACHE=${DMAPLACE_VM_CACHE:-$HOME/.cache/dmaplace-vm}
JOBS=${DMAPLACE_VM_JOBS:-$(nproc)}

RUST_VERSION=1.78.0
BINDGEN_VERSION=0.65.1
LINUX_SOURCE_PKG=linux-source-6.12
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios busybox-static)
# qemu loadable modules the rig uses (checked with ldd after fetch).
QEMU_MODULES=(accel-tcg-x86_64 hw-display-virtio-gpu hw-display-virtio-gpu-pci)
# Debian kernel modules the guest loads (plus their depends=, in order).
DEBIAN_MODULES=(vgem cirrus virtio-gpu)
HOST_TOOLS=(cpio xz-utils gzip binutils file util-linux coreutils)
KERNEL_BUILD_DEPS=(flex bison libelf-dev m4 bc clang lld llvm libclang-dev make)
DEFAULT_TIMEOUT=300
DEFAULT_MEM=1G
CUSTOM_CMA=64M

usage() {
	cat <<EOF
Usage: vm/rig.sh <command> [options]

Commands:
  fetch         Download qemu, busybox and Debian's newest linux-image-6.12.*+deb12-amd64
                (apt-get download + dpkg -x, no install) into the cache.
  kernel        [--debug] Build the custom kernel (linux-source-6.12, tinyconfig +
                vm/kernel.config, CONFIG_RUST with rustc $RUST_VERSION / bindgen $BINDGEN_VERSION,
                LLVM=1, kernel/*.patch applied). --debug: the debug kernel, which adds
                vm/kernel-debug.config (lockdep, KASAN, DEBUG_VM, DEBUG_PAGEALLOC, DMA_API_DEBUG).
  kernel-dir    [--debug] Print the kernel's build dir (make -C <dir> M=<moddir> LLVM=1 modules).
  kernel-env    [--debug] Print shell exports (PATH, RUSTUP_TOOLCHAIN) for building out-of-tree
                Rust modules: eval "\$(vm/rig.sh kernel-env)".
  initramfs     --kernel debian|custom|custom-debug [--out FILE] [run's file options] BIN...
                Build a gzip cpio (busybox, /init, modules, BINs) and print its path.
  run           --kernel debian|custom|custom-debug [--iommu | --machine pc|q35] [--mem $DEFAULT_MEM] [--smp 1]
                [--append "..."] [--timeout $DEFAULT_TIMEOUT] [--args "..."] [--file SRC[:DEST]]...
                [--insmod 'KO [param=value...]']... [--allow-dmesg REGEX] [--quiet] BIN [BIN...]
                Boot the kernel with BINs (static executables) in an initramfs; the guest
                runs each as root with DMAPLACE_IN_GUEST=1 DMAPLACE_KERNEL=<kernel>
                DMAPLACE_IOMMU=0|1 DMAPLACE_MACHINE=pc|q35. Exit 0 only if the guest prints DMAPLACE-RESULT: PASS.
  smoke         Build vm/probe (static) and run it on debian, custom and custom --iommu.
  all           fetch, kernel, smoke; prints timings per step.

Environment:
  DMAPLACE_VM_CACHE   cache dir (default \$HOME/.cache/dmaplace-vm; now $CACHE)
  DMAPLACE_VM_JOBS    make -j for the kernel build (default: nproc = $(nproc))
EOF
}

# ---------------------------------------------------------------- helpers
log() { printf '[rig %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	printf '\n[rig] ERROR: %s\n\n' "$*" >&2
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
sha() { sha256sum "$@" | cut -c1-16; }
sha_str() { printf '%s' "$1" | sha256sum | cut -c1-16; }

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif have sudo; then
		sudo "$@"
	else
		die "need root (or sudo) for: $*"
	fi
}

pkg_installed() {
	[[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true) == ii* ]]
}

apt_ready() {
	if ! apt-cache show "$LINUX_SOURCE_PKG" >/dev/null 2>&1; then
		log "apt lists lack $LINUX_SOURCE_PKG; running apt-get update"
		as_root apt-get update -qq || die "apt-get update failed"
	fi
}

# Install host packages that are missing. --no-remove: never remove anything.
apt_ensure() {
	local missing=() p
	for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	apt_ready
	log "apt-get install ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-remove \
		-o DPkg::Lock::Timeout=600 "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

candidate_version() {
	local v
	v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
	[[ -n $v && $v != "(none)" ]] || die "apt has no candidate for package $1"
	printf '%s\n' "$v"
}

# deb_path PKG VER: the cached .deb of exactly that version, if any.
deb_path() {
	local f
	for f in "$CACHE/debs/${1}_"*.deb; do
		[[ -f $f && $(dpkg-deb -f "$f" Version) == "$2" ]] && {
			printf '%s\n' "$f"
			return 0
		}
	done
	return 0
}

# deb_download PKG...: apt-get download the candidate versions into
# $CACHE/debs (one apt call for all that are missing); prints one path per PKG.
deb_download() {
	local p ver want=() vers=() i
	mkdir -p "$CACHE/debs"
	for p in "$@"; do
		ver=$(candidate_version "$p")
		vers+=("$ver")
		[[ -n $(deb_path "$p" "$ver") ]] || want+=("$p=$ver")
	done
	if [[ ${#want[@]} -gt 0 ]]; then
		log "apt-get download ${want[*]}"
		(
			cd "$CACHE/debs"
			apt-get download -qq "${want[@]}" 2>&1 | { grep -v 'unsandboxed as root' || true; } >&2
		) || die "apt-get download ${want[*]} failed"
	fi
	for i in "${!vers[@]}"; do
		p=${*:i+1:1}
		ver=$(deb_path "$p" "${vers[i]}")
		[[ -n $ver ]] || die "apt-get download $p=${vers[i]} produced no .deb in $CACHE/debs"
		printf '%s\n' "$ver"
	done
}

with_lock() { # with_lock NAME CMD...: serialise cache writers across processes
	local name=$1
	shift
	mkdir -p "$CACHE/locks"
	(
		flock -w 3600 9 || die "timed out waiting for lock $CACHE/locks/$name"
		"$@"
	) 9>"$CACHE/locks/$name"
}

# ---------------------------------------------------------------- fetch: qemu
qemu_dir() {
	local key
	key=$(sha_str "$(for p in "${QEMU_PKGS[@]}"; do echo "$p=$(candidate_version "$p")"; done)")
	printf '%s\n' "$CACHE/qemu/$(candidate_version qemu-system-x86 | tr ':+~' '_._')-$key"
}

qemu_env() { # qemu_env ROOT: export what the unpacked qemu needs
	local r=$1
	export LD_LIBRARY_PATH="$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export QEMU_MODULE_DIR="$r/usr/lib/x86_64-linux-gnu/qemu"
}

qemu_missing_libs() { # ROOT: print sonames ldd cannot resolve for qemu + used modules
	local r=$1 f
	(
		qemu_env "$r"
		for f in "$r/usr/bin/qemu-system-x86_64" "${QEMU_MODULES[@]/#/$QEMU_MODULE_DIR/}"; do
			[[ $f == *.so || $f == */qemu-system-x86_64 ]] || f="$f.so"
			[[ -e $f ]] || {
				echo "MISSING-FILE:$f"
				continue
			}
			ldd "$f" | awk '/not found/ {print $1}'
		done
	) | sort -u
}

qemu_selftest() { # ROOT: loud check that the unpacked qemu really runs TCG
	local r=$1 out
	(
		qemu_env "$r"
		"$r/usr/bin/qemu-system-x86_64" --version | sed -n 1p >&2 || die "unpacked qemu does not run: $r/usr/bin/qemu-system-x86_64 --version"
		out=$(echo quit | timeout 30 "$r/usr/bin/qemu-system-x86_64" -L "$r/usr/share/qemu" -L "$r/usr/share/seabios" \
			-machine none -accel tcg -nodefaults -display none -monitor stdio 2>&1) ||
			die "unpacked qemu cannot start with -accel tcg: $out"
		out=$(timeout 30 "$r/usr/bin/qemu-system-x86_64" -device virtio-gpu-pci,help 2>&1) ||
			die "unpacked qemu cannot load virtio-gpu-pci: $out"
	)
}

fetch_qemu() {
	local dir tmp p deb missing cand pool f so changed
	dir=$(qemu_dir)
	if [[ -f $dir/.complete ]]; then
		ln -sfn "$dir" "$CACHE/qemu/current"
		return 0
	fi
	log "fetching qemu into $dir"
	tmp="$dir.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp/root"
	local debs
	mapfile -t debs < <(deb_download "${QEMU_PKGS[@]}")
	[[ ${#debs[@]} -eq ${#QEMU_PKGS[@]} ]] || die "could not download ${QEMU_PKGS[*]}"
	for deb in "${debs[@]}"; do dpkg -x "$deb" "$tmp/root"; done
	# Shared libraries: candidates are qemu's (recursive) lib* dependencies not
	# installed on this host. Unpack only those that provide a soname ldd misses.
	mapfile -t cand < <(apt-cache depends --recurse --no-recommends --no-suggests --no-enhances \
		--no-breaks --no-conflicts --no-replaces qemu-system-x86 |
		grep -E '^lib[a-z0-9.+-]+$' | sort -u | while read -r p; do pkg_installed "$p" || echo "$p"; done)
	mapfile -t pool < <(deb_download "${cand[@]}")
	[[ ${#pool[@]} -eq ${#cand[@]} ]] || die "could not download qemu library candidates ${cand[*]}"
	: >"$tmp/libs.txt"
	for _ in 1 2 3 4 5 6; do
		mapfile -t missing < <(qemu_missing_libs "$tmp/root")
		[[ ${#missing[@]} -eq 0 ]] && break
		changed=0
		for so in "${missing[@]}"; do
			[[ $so == MISSING-FILE:* ]] && die "qemu package lacks ${so#MISSING-FILE:}"
			for f in "${pool[@]}"; do
				if grep -qE "/${so//./\\.}( |$)" <<<"$(dpkg-deb -c "$f")"; then
					log "qemu needs $so: unpacking $(basename "$f")"
					dpkg -x "$f" "$tmp/root"
					basename "$f" >>"$tmp/libs.txt"
					changed=1
					break
				fi
			done
		done
		[[ $changed -eq 1 ]] || die "qemu needs ${missing[*]} but no candidate package provides it (candidates: ${cand[*]})"
	done
	mapfile -t missing < <(qemu_missing_libs "$tmp/root")
	[[ ${#missing[@]} -eq 0 ]] || die "qemu still misses libraries: ${missing[*]}"
	qemu_selftest "$tmp/root"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	touch "$dir/.complete"
	ln -sfn "$dir" "$CACHE/qemu/current"
	log "qemu ready: $dir (extra libs: $(tr '\n' ' ' <"$dir/libs.txt"))"
}

# ---------------------------------------------------------------- fetch: Debian kernel
debian_kernel_pkg() {
	local p
	p=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
		awk '{print $1}' | sort -V | tail -n1)
	[[ -n $p ]] || die "apt-cache finds no linux-image-6.12.*+deb12-amd64-unsigned (is bookworm-security in sources?)"
	printf '%s\n' "$p"
}

modinfo_field() { # KO FIELD: read FIELD= from the module's .modinfo section
	objcopy -O binary --only-section=.modinfo "$1" "$1.modinfo" || die "objcopy cannot read .modinfo of $1"
	tr '\0' '\n' <"$1.modinfo" | sed -n "s/^$2=//p"
	rm -f "$1.modinfo"
}

fetch_debian_kernel() {
	local pkg ver kver dir tmp deb mdir name path
	pkg=$(debian_kernel_pkg)
	ver=$(candidate_version "$pkg")
	kver=${pkg#linux-image-}
	kver=${kver%-unsigned}
	dir="$CACHE/debian-kernel/$kver-$(printf '%s' "$ver" | tr ':+~' '_._')"
	if [[ -f $dir/.complete ]]; then
		ln -sfn "$dir" "$CACHE/debian-kernel/current"
		return 0
	fi
	log "fetching $pkg=$ver into $dir"
	deb=$(deb_download "$pkg")
	tmp="$dir.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp/x" "$tmp/modules"
	dpkg -x "$deb" "$tmp/x"
	mdir="$tmp/x/lib/modules/$kver"
	[[ -f $tmp/x/boot/vmlinuz-$kver ]] || die "$pkg has no /boot/vmlinuz-$kver"
	[[ -f $mdir/modules.order ]] || die "$pkg has no modules.order"
	cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/vmlinuz"
	cp "$tmp/x/boot/config-$kver" "$tmp/config"
	printf '%s\n' "$kver" >"$tmp/release"
	# name -> relative path, from modules.order (names normalised to '_')
	declare -A where=() state=()
	while read -r path; do
		name=$(basename "$path" .ko)
		where[${name//-/_}]=$path
	done <"$mdir/modules.order"
	local order=()
	visit() { # depth-first, dependencies first
		local n=${1//-/_} ko deps d
		[[ ${state[$n]:-} == "done" ]] && return 0
		[[ ${state[$n]:-} == busy ]] && die "module dependency cycle at $n"
		[[ -n ${where[$n]:-} ]] || die "module $n not in $pkg (modules.order)"
		state[$n]=busy
		ko="$tmp/modules/$n.ko"
		xz -dc "$mdir/${where[$n]}.xz" >"$ko" || die "cannot decompress ${where[$n]}.xz"
		deps=$(modinfo_field "$ko" depends)
		for d in ${deps//,/ }; do visit "$d"; done
		state[$n]="done"
		order+=("$n")
	}
	for name in "${DEBIAN_MODULES[@]}"; do visit "$name"; done
	printf '%s\n' "${order[@]}" >"$tmp/modules.load"
	rm -rf "$tmp/x"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	touch "$dir/.complete"
	ln -sfn "$dir" "$CACHE/debian-kernel/current"
	rm -f "$deb" # 100+ MB; the unpacked result is keyed by its version
	log "Debian kernel ready: $dir (modules: $(tr '\n' ' ' <"$dir/modules.load"))"
}

cmd_fetch() {
	apt_ensure "${HOST_TOOLS[@]}"
	apt_ready
	mkdir -p "$CACHE/qemu" "$CACHE/debian-kernel"
	with_lock fetch fetch_qemu
	with_lock fetch fetch_debian_kernel
	[[ -x $CACHE/qemu/current/root/bin/busybox ]] || die "busybox-static missing from $CACHE/qemu/current/root/bin/busybox"
	log "fetch done: qemu=$(readlink "$CACHE/qemu/current") debian-kernel=$(readlink "$CACHE/debian-kernel/current")"
}

# ---------------------------------------------------------------- kernel
# The kernel flavour: `custom`, or `debug` (vm/kernel-debug.config on top).
FLAVOUR=custom

kernel_patches() { # the patches in force, in the order they are applied
	local p=()
	mapfile -t p < <(find "$REPO_DIR/kernel" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
	if [[ ${#p[@]} -gt 0 ]]; then
		printf '%s\n' "${p[@]}"
	else
		printf '%s\n' "$RIG_DIR/bindings_helper.default.patch"
	fi
}

combined_patch() { # print every patch in force, concatenated (one patch for `patch -p1`)
	local f
	while read -r f; do cat "$f"; done < <(kernel_patches)
}

config_fragments() { # the config fragments of $FLAVOUR, merged in this order
	printf '%s\n' "$RIG_DIR/kernel.config"
	[[ $FLAVOUR == debug ]] && printf '%s\n' "$RIG_DIR/kernel-debug.config"
	return 0
}

# The build tree is keyed by everything that changes it: <base key> covers
# linux-source version, the config fragments and the toolchain; p<sha> the patches.
kernel_base_key() {
	local srcver clangv frags="" f tag=""
	srcver=$(candidate_version "$LINUX_SOURCE_PKG")
	have clang || die "clang is not installed: run vm/rig.sh kernel"
	clangv=$(clang --version | sed -n 1p)
	while read -r f; do frags+="$(sha "$f")"; done < <(config_fragments)
	[[ $FLAVOUR == debug ]] && tag="-debug"
	printf 'linux-%s%s-%s\n' "${srcver//[:~+]/_}" "$tag" \
		"$(sha_str "src=$srcver frag=$frags rustc=$RUST_VERSION bindgen=$BINDGEN_VERSION clang=$clangv")"
}

kernel_dir() {
	printf '%s\n' "$CACHE/kernel/$(kernel_base_key)-p$(combined_patch | sha_stdin)"
}

sha_stdin() { sha256sum | cut -c1-16; }

# The effective fragment: every fragment's lines, a later setting of an option
# replacing an earlier one (what merge_config.sh does).
merged_fragment() {
	local f
	while read -r f; do grep -E '^(CONFIG_|# CONFIG_)' "$f"; done < <(config_fragments) |
		awk '{ o = $1 == "#" ? $2 : $1; sub(/=.*/, "", o); if (!(o in v)) k[n++] = o; v[o] = $0 }
			END { for (i = 0; i < n; i++) print v[k[i]] }'
}

bindgen_root() { printf '%s\n' "$CACHE/tools/bindgen-$BINDGEN_VERSION"; }

toolchain_path() { # PATH with the pinned rustc and bindgen first
	local rustc
	rustc=$(rustup which --toolchain "$RUST_VERSION" rustc 2>/dev/null) ||
		die "rust $RUST_VERSION not installed: run vm/rig.sh kernel"
	printf '%s\n' "$(dirname "$rustc"):$(bindgen_root)/bin:$PATH"
}

ensure_toolchain() {
	have rustup || die "rustup not found; the kernel build needs rustup to pin rustc $RUST_VERSION"
	local comps
	comps=$(rustup component list --toolchain "$RUST_VERSION" --installed 2>/dev/null || true)
	if ! grep -q '^rust-src' <<<"$comps" || ! grep -q '^rustfmt' <<<"$comps"; then
		log "rustup toolchain install $RUST_VERSION"
		rustup toolchain install "$RUST_VERSION" --profile minimal -c rust-src -c rustfmt >&2 ||
			die "rustup toolchain install $RUST_VERSION failed"
	fi
	local broot
	broot=$(bindgen_root)
	if ! "$broot/bin/bindgen" --version 2>/dev/null | grep -qF "$BINDGEN_VERSION"; then
		log "cargo install bindgen-cli $BINDGEN_VERSION (pinned to rustc $RUST_VERSION)"
		RUSTUP_TOOLCHAIN=$RUST_VERSION cargo install --locked --root "$broot" bindgen-cli --version "$BINDGEN_VERSION" >&2 ||
			die "cargo install bindgen-cli $BINDGEN_VERSION failed"
	fi
}

check_config() { # .config FRAGMENT: every requested option must have survived
	local cfg=$1 frag=$2 line opt val bad=()
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			opt=${BASH_REMATCH[1]}
			val=${BASH_REMATCH[2]}
			grep -qxF "$opt=$val" "$cfg" || bad+=("$opt=$val (got: $(grep -E "^(# )?${opt}[= ]" "$cfg" || echo 'absent'))")
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			opt=${BASH_REMATCH[1]}
			grep -qE "^$opt=" "$cfg" && bad+=("$opt should be unset (got: $(grep -E "^$opt=" "$cfg"))")
		fi
	done <"$frag"
	if [[ ${#bad[@]} -gt 0 ]]; then
		printf '[rig]   dropped/changed: %s\n' "${bad[@]}" >&2
		die "Kconfig did not keep ${#bad[@]} option(s) from $frag (unmet dependencies?); see above"
	fi
}

build_kernel() {
	local kdir srcver patch tmp deb kpath frags=() merged t0
	kdir=$(kernel_dir)
	kpath=$(toolchain_path)
	export PATH=$kpath RUSTUP_TOOLCHAIN=$RUST_VERSION
	if [[ -f $kdir/.dmaplace-built ]]; then
		log "$FLAVOUR kernel up to date: $kdir"
		return 0
	fi
	t0=$(date +%s)
	srcver=$(candidate_version "$LINUX_SOURCE_PKG")
	mkdir -p "$CACHE/tmp"
	patch="$CACHE/tmp/patch.$$"
	combined_patch >"$patch"
	if [[ ! -f $kdir/.dmaplace-unpacked ]]; then
		seed_from_sibling "$kdir" "$patch" || unpack_source "$kdir" "$srcver" "$patch"
	fi
	rm -f "$patch"
	cd "$kdir"
	make -s LLVM=1 rustavailable >&2 || die "Rust toolchain not usable for the kernel (make rustavailable); PATH=$PATH"
	mapfile -t frags < <(config_fragments)
	log "configuring: tinyconfig + ${frags[*]#"$REPO_DIR/"}"
	make -s LLVM=1 tinyconfig >&2
	scripts/kconfig/merge_config.sh -m .config "${frags[@]}" >/dev/null
	make -s LLVM=1 olddefconfig >&2
	merged="$kdir/.dmaplace-fragment"
	merged_fragment >"$merged"
	check_config .config "$merged"
	cp .config "$kdir/.dmaplace-config"
	log "building: make LLVM=1 -j$JOBS bzImage modules (log: $kdir/build.log)"
	if ! make LLVM=1 -j"$JOBS" bzImage modules >"$kdir/build.log" 2>&1; then
		tail -n 40 "$kdir/build.log" >&2
		die "kernel build failed; full log: $kdir/build.log"
	fi
	make LLVM=1 -j"$JOBS" rust-analyzer >>"$kdir/build.log" 2>&1 || log "warning: make rust-analyzer failed (see $kdir/build.log)"
	# uapi headers in usr/include, for userspace built against this exact tree (selftests)
	make LLVM=1 headers >>"$kdir/build.log" 2>&1 || die "make headers failed; full log: $kdir/build.log"
	[[ -f arch/x86/boot/bzImage ]] || die "no arch/x86/boot/bzImage after build in $kdir"
	[[ -f Module.symvers ]] || die "no Module.symvers after build in $kdir"
	grep -q 'pub struct dma_buf ' rust/bindings/bindings_generated.rs ||
		die "rust/bindings lacks struct dma_buf: the kernel patches ($(kernel_patches | tr '\n' ' ')) did not take effect"
	build_kmod_probe "$kdir"
	printf 'build_seconds=%s\n' "$(($(date +%s) - t0))" >"$kdir/.dmaplace-built"
	gc_kernels
	log "$FLAVOUR kernel built in $(($(date +%s) - t0)) s: $kdir/arch/x86/boot/bzImage"
}

unpack_source() { # KDIR SRCVER PATCH: fresh tree from linux-source, patched
	local kdir=$1 srcver=$2 patch=$3 deb tmp
	log "unpacking $LINUX_SOURCE_PKG=$srcver"
	mapfile -t deb < <(deb_download "$LINUX_SOURCE_PKG")
	tmp="$kdir.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp/deb"
	dpkg -x "${deb[0]}" "$tmp/deb"
	tar -xJf "$tmp/deb/usr/src/$LINUX_SOURCE_PKG.tar.xz" -C "$tmp" || die "cannot unpack $LINUX_SOURCE_PKG.tar.xz"
	rm -rf "$tmp/deb"
	rm -f "${deb[0]}" # 150 MB; re-downloading takes seconds
	[[ -f $tmp/$LINUX_SOURCE_PKG/Makefile ]] || die "$LINUX_SOURCE_PKG tarball has no Makefile"
	log "applying $patch"
	patch -p1 -d "$tmp/$LINUX_SOURCE_PKG" <"$patch" >&2 || die "patch $patch does not apply to $LINUX_SOURCE_PKG=$srcver"
	cp "$patch" "$tmp/$LINUX_SOURCE_PKG/.dmaplace-patch"
	rm -rf "$kdir"
	mv "$tmp/$LINUX_SOURCE_PKG" "$kdir"
	rm -rf "$tmp"
	printf 'linux-source=%s\npatch=%s\n' "$srcver" "$patch" >"$kdir/.dmaplace-unpacked"
}

# seed_from_sibling KDIR PATCH: when only the bindings_helper patch changed,
# copy a built tree with the same base key, swap the patch and rebuild
# incrementally (seconds instead of a full build). Fails if there is none.
seed_from_sibling() {
	local kdir=$1 patch=$2 base sib tmp
	base=$(kernel_base_key)
	# the newest tree with the same base key, built or not (a failed build keeps its objects)
	sib=$(find "$CACHE/kernel" -maxdepth 2 -path "*/$base-p*/.dmaplace-patch" -printf '%T@ %h\n' 2>/dev/null |
		grep -v '\.tmp\.' | sort -rn | sed -n '1s/^[^ ]* //p')
	[[ -n $sib && -f $sib/.dmaplace-patch && $sib != "$kdir" ]] || return 1
	log "seeding from $sib (same kernel, different patches)"
	tmp="$kdir.tmp.$$"
	rm -rf "$tmp"
	cp -a "$sib" "$tmp"
	rm -f "$tmp/.dmaplace-built"
	if ! patch -R -p1 -d "$tmp" <"$tmp/.dmaplace-patch" >&2; then
		rm -rf "$tmp"
		log "could not revert the old patch in the copy; unpacking fresh"
		return 1
	fi
	rm -f "$tmp/.dmaplace-fragment" "$tmp/.dmaplace-config"
	patch -p1 -d "$tmp" <"$patch" >&2 || {
		rm -rf "$tmp"
		die "patch $patch does not apply to the kernel source (reverted copy of $sib)"
	}
	cp "$patch" "$tmp/.dmaplace-patch"
	rm -rf "$kdir"
	mv "$tmp" "$kdir"
	printf 'seeded-from=%s\npatch=%s\n' "$sib" "$patch" >"$kdir/.dmaplace-unpacked"
}

# Keep the $DMAPLACE_VM_KEEP_KERNELS (default 3) most recently used built trees
# of each flavour, and any tree used in the last day (several branches in
# parallel use different trees: none evicts another's); ~2 GB each (debug ~3 GB).
# A tree's last use is the mtime of its .dmaplace-used (touched by every
# kernel-dir/kernel-env/run), else of .dmaplace-built.
gc_kernels() {
	local keep=${DMAPLACE_VM_KEEP_KERNELS:-3} d
	find "$CACHE/kernel" -maxdepth 2 -name .dmaplace-built -printf '%h\n' | while read -r d; do
		printf '%s %s\n' "$(stat -c %Y "$d/.dmaplace-used" 2>/dev/null || stat -c %Y "$d/.dmaplace-built")" "$d"
	done | sort -rn |
		if [[ $FLAVOUR == debug ]]; then grep -- '-debug-'; else grep -v -- '-debug-'; fi |
		sed -n "$((keep + 1)),\$p" | awk -v old="$(($(date +%s) - 86400))" '$1 < old' |
		cut -d' ' -f2- | while read -r d; do
		log "removing old kernel tree $d (keeping $keep)"
		mv "$d" "$CACHE/kernel/.trash.$$.${d##*/}"
	done
	# deleting ~2 GB trees takes tens of seconds: do it in the background
	find "$CACHE/kernel" -maxdepth 1 \( -name '.trash.*' -o -name '*.tmp.*' -mmin +120 \) -print0 |
		xargs -0 -r sh -c 'nohup rm -rf "$@" >/dev/null 2>&1 &' rm-old-kernels
}

build_kmod_probe() { # prove out-of-tree Rust modules build against KDIR
	local kdir=$1 m="$1/.dmaplace-kmod-probe"
	rm -rf "$m"
	mkdir -p "$m"
	cp "$RIG_DIR/kmod-probe/Kbuild" "$RIG_DIR/kmod-probe/dmaplace_rig_probe.rs" "$m/"
	make -C "$kdir" M="$m" LLVM=1 modules >"$m/build.log" 2>&1 || {
		cat "$m/build.log" >&2
		die "out-of-tree Rust module vm/kmod-probe does not build against $kdir"
	}
	[[ -f $m/dmaplace_rig_probe.ko ]] || die "no dmaplace_rig_probe.ko after building vm/kmod-probe"
}

parse_flavour() { # [--debug]
	while [[ $# -gt 0 ]]; do
		case $1 in
		--debug) FLAVOUR=debug; shift ;;
		*) die "unknown option $1 (see vm/rig.sh --help)" ;;
		esac
	done
}

cmd_kernel() {
	parse_flavour "$@"
	apt_ensure "${HOST_TOOLS[@]}" "${KERNEL_BUILD_DEPS[@]}"
	apt_ready
	ensure_toolchain
	mkdir -p "$CACHE/kernel"
	# A built tree never changes: no need to wait for another build's lock.
	if [[ -f $(kernel_dir)/.dmaplace-built ]]; then
		log "$FLAVOUR kernel up to date: $(kernel_dir)"
	else
		with_lock kernel build_kernel
	fi
	kernel_dir
}

cmd_kernel_dir() {
	local d
	d=$(kernel_dir)
	[[ -f $d/.dmaplace-built ]] ||
		die "$FLAVOUR kernel not built for the current inputs ($d): run vm/rig.sh kernel$([[ $FLAVOUR == debug ]] && echo ' --debug')"
	touch "$d/.dmaplace-used" 2>/dev/null || true # last use, for gc_kernels
	printf '%s\n' "$d"
}

cmd_kernel_env() {
	parse_flavour "$@"
	cmd_kernel_dir >/dev/null
	printf 'export PATH=%q\nexport RUSTUP_TOOLCHAIN=%q\nexport DMAPLACE_KERNEL_DIR=%q\n' \
		"$(toolchain_path)" "$RUST_VERSION" "$(kernel_dir)"
}

# ---------------------------------------------------------------- initramfs
# Options shared by `initramfs` and `run` (set by parse_opts).
K="" IOMMU=0 MACHINE=pc MEM=$DEFAULT_MEM SMP=1 APPEND="" TIMEOUT=$DEFAULT_TIMEOUT ARGS="" QUIET=0 OUT="" ALLOW_DMESG=""
FILES=() KOS=() BINS=()

parse_opts() {
	while [[ $# -gt 0 ]]; do
		case $1 in
		--kernel) K=${2:?--kernel needs debian|custom}; shift 2 ;;
		--iommu) IOMMU=1; shift ;;
		--machine) MACHINE=${2:?--machine needs pc|q35}; shift 2 ;;
		--mem) MEM=${2:?}; shift 2 ;;
		--smp) SMP=${2:?}; shift 2 ;;
		--append) APPEND=${2?}; shift 2 ;;
		--timeout) TIMEOUT=${2:?}; shift 2 ;;
		--args) ARGS=${2?}; shift 2 ;;
		--allow-dmesg) ALLOW_DMESG=${2:?}; shift 2 ;;
		--file) FILES+=("${2:?}"); shift 2 ;;
		--insmod) KOS+=("${2:?}"); shift 2 ;;
		--out) OUT=${2:?}; shift 2 ;;
		-q | --quiet) QUIET=1; shift ;;
		-h | --help) usage; exit 0 ;;
		--) shift; BINS+=("$@"); break ;;
		-*) die "unknown option $1 (see vm/rig.sh --help)" ;;
		*) BINS+=("$1"); shift ;;
		esac
	done
	case $K in
	debian | custom) ;;
	custom-debug) FLAVOUR=debug ;;
	*) die "--kernel debian|custom|custom-debug is required (got '$K')" ;;
	esac
	[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$TIMEOUT'"
	[[ $MACHINE == pc || $MACHINE == q35 ]] || die "--machine pc|q35, got '$MACHINE'"
	[[ $IOMMU == 0 ]] || MACHINE=q35
}

iommu_tag() { if [[ $IOMMU == 1 ]]; then printf '%s' "$1"; fi; }

kernel_image() { # prints the kernel image for $K
	if [[ $K == debian ]]; then
		[[ -f $CACHE/debian-kernel/current/.complete ]] || die "Debian kernel not fetched: run vm/rig.sh fetch"
		printf '%s\n' "$CACHE/debian-kernel/current/vmlinuz"
	else
		printf '%s\n' "$(cmd_kernel_dir)/arch/x86/boot/bzImage"
	fi
}

write_init() {
	cat >"$1" <<'EOF'
#!/bin/busybox sh
# dmaplace guest init (generated by vm/rig.sh)
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mkdir -p /proc /sys /dev /tmp /root /dev/shm
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/shm
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
. /etc/dmaplace.env
export DMAPLACE_IN_GUEST DMAPLACE_KERNEL DMAPLACE_IOMMU DMAPLACE_MACHINE RUST_BACKTRACE
fail=""
# dma-debug prints only its first error by default: print every one.
[ -w /sys/kernel/debug/dma-api/num_errors ] && echo 10000 >/sys/kernel/debug/dma-api/num_errors
for m in $(cat /lib/modules/modules.load); do
	insmod "/lib/modules/$m.ko" || fail="$fail insmod:$m"
done
# --insmod modules, in the order given, with their parameters
while read -r ko params; do
	[ -n "$ko" ] || continue
	echo "DMAPLACE-INSMOD: $ko $params"
	# shellcheck disable=SC2086 # parameters are separate words
	insmod "/lib/modules/extra/$ko" $params || fail="$fail insmod:$ko"
done </lib/modules/extra/order
echo "DMAPLACE-GUEST: kernel=$DMAPLACE_KERNEL machine=$DMAPLACE_MACHINE iommu=$DMAPLACE_IOMMU release=$(uname -r) cmdline=$(cat /proc/cmdline)"
for t in /tests/*/*; do
	[ -e "$t" ] || continue
	name=${t#/tests/}
	echo "DMAPLACE-RUN: $name"
	cd /tmp
	# shellcheck disable=SC2086
	"$t" $DMAPLACE_ARGS
	rc=$?
	cd /
	echo "DMAPLACE-EXIT: $name $rc"
	[ "$rc" -eq 0 ] || fail="$fail $name=exit$rc"
done
# Any kernel report fails the run: WARN, BUG (KASAN reports, sleeping in atomic
# context), Oops, lockdep splats (WARNING: possible ... / INFO: ...), dma-debug
# errors (DMA-API: lines other than its two boot notices), except what
# --allow-dmesg REGEX names: a known report from kernel code outside the test,
# the "DMA-API:" line and the WARNING that follows it dropped together.
dmesg >/tmp/dmesg
allowed=0
if [ -n "$DMAPLACE_ALLOW_DMESG" ]; then
	allowed=$(grep -cE "$DMAPLACE_ALLOW_DMESG" /tmp/dmesg)
	echo "DMAPLACE-CHECK: $allowed kernel report(s) allowed by --allow-dmesg"
	# (the regex goes through the environment: awk -v would eat its backslashes)
	DMAPLACE_RE="$DMAPLACE_ALLOW_DMESG" awk 'BEGIN { re = ENVIRON["DMAPLACE_RE"] }
		$0 ~ re { skip = 1; next } skip && /WARNING:/ { skip = 0; next } { skip = 0; print }' \
		/tmp/dmesg >/tmp/dmesg.checked
	mv /tmp/dmesg.checked /tmp/dmesg
fi
if grep -E 'WARNING:|BUG:|Oops|UBSAN:|Kernel panic|general protection fault|INFO: (possible|inconsistent|trying to register|lockdep)|DMA-API: ' /tmp/dmesg |
	grep -vE 'DMA-API: (preallocated [0-9]+ debug entries|debugging enabled by kernel config|Mapped at:)$' >/tmp/kbad; then
	echo "DMAPLACE-DMESG: kernel reports:"
	cat /tmp/kbad
	# the context of the first one (the console shows only errors; traces are warnings)
	first=$(grep -nE 'WARNING:|BUG:|Oops|UBSAN:|INFO: |DMA-API: ' /tmp/dmesg | grep -vE 'DMA-API: (preallocated [0-9]+ debug entries|debugging enabled by kernel config|Mapped at:)$' | head -n1 | cut -d: -f1)
	echo "DMAPLACE-DMESG: context:"
	tail -n +"$((first > 5 ? first - 5 : 1))" /tmp/dmesg | head -n 80
	fail="$fail dmesg:reports"
fi
# lockdep turns itself off after its first report (or when it runs out of room)
if [ -r /proc/lockdep_stats ]; then
	dl=$(sed -n 's/^ *debug_locks: *//p' /proc/lockdep_stats)
	echo "DMAPLACE-CHECK: lockdep debug_locks=$dl"
	[ "$dl" = 1 ] || fail="$fail lockdep:off"
fi
if [ -r /sys/kernel/debug/dma-api/error_count ]; then
	ne=$(cat /sys/kernel/debug/dma-api/error_count)
	dis=$(cat /sys/kernel/debug/dma-api/disabled)
	echo "DMAPLACE-CHECK: dma-api error_count=$ne disabled=$dis"
	[ "$ne" = "$allowed" ] || fail="$fail dma-api:errors=$ne"
	[ "$dis" = N ] || [ "$dis" = 0 ] || fail="$fail dma-api:disabled"
fi
if [ -z "$fail" ]; then
	echo "DMAPLACE-RESULT: PASS"
else
	echo "DMAPLACE-RESULT: FAIL$fail"
fi
sync
poweroff -f
sleep 5
EOF
	chmod 755 "$1"
}

# build_initramfs OUT: uses K IOMMU ARGS FILES KOS BINS
build_initramfs() {
	local out=$1 st b i=0 f src dest qroot kdir m
	qroot="$CACHE/qemu/current/root"
	[[ -x $qroot/bin/busybox ]] || die "busybox not fetched: run vm/rig.sh fetch"
	have cpio || die "cpio not installed: run vm/rig.sh fetch"
	st=$(mktemp -d "${TMPDIR:-/tmp}/dmaplace-initramfs.XXXXXX")
	mkdir -p "$st"/{bin,dev,proc,sys,tmp,etc,tests,lib/modules/extra}
	cp "$qroot/bin/busybox" "$st/bin/busybox"
	write_init "$st/init"
	if [[ $K == debian ]]; then
		kdir="$CACHE/debian-kernel/current"
		[[ -f $kdir/.complete ]] || die "Debian kernel not fetched: run vm/rig.sh fetch"
		cp "$kdir/modules.load" "$st/lib/modules/modules.load"
		while read -r m; do cp "$kdir/modules/$m.ko" "$st/lib/modules/"; done <"$kdir/modules.load"
	else
		: >"$st/lib/modules/modules.load" # DRM drivers are built in
	fi
	: >"$st/lib/modules/extra/order"
	local ko params
	for f in "${KOS[@]}"; do
		read -r ko params <<<"$f"
		[[ -f $ko ]] || die "--insmod $ko: no such file"
		cp "$ko" "$st/lib/modules/extra/"
		printf '%s %s\n' "$(basename "$ko")" "$params" >>"$st/lib/modules/extra/order"
	done
	for b in "${BINS[@]}"; do
		[[ -f $b && -x $b ]] || die "test binary $b does not exist or is not executable"
		if grep -q 'Requesting program interpreter' <<<"$(readelf -l "$b" 2>/dev/null)"; then
			die "$b is dynamically linked; the guest has no libc. Build with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu"
		fi
		i=$((i + 1))
		mkdir -p "$st/tests/$(printf '%02d' "$i")" # keeps argv[0] = the binary's own name
		cp "$b" "$st/tests/$(printf '%02d' "$i")/$(basename "$b")"
	done
	for f in "${FILES[@]}"; do
		src=${f%%:*}
		dest=${f#*:}
		[[ $f == *:* ]] || dest="/$(basename "$src")"
		[[ -e $src ]] || die "--file $src: no such file"
		mkdir -p "$st/$(dirname "$dest")"
		cp -r "$src" "$st/$dest"
	done
	{
		echo "DMAPLACE_IN_GUEST=1"
		echo "DMAPLACE_KERNEL=$K"
		echo "DMAPLACE_IOMMU=$IOMMU"
		echo "DMAPLACE_MACHINE=$MACHINE"
		echo "RUST_BACKTRACE=1"
		printf 'DMAPLACE_ARGS=%q\n' "$ARGS"
		printf 'DMAPLACE_ALLOW_DMESG=%q\n' "$ALLOW_DMESG"
	} >"$st/etc/dmaplace.env"
	(cd "$st" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet | gzip -1) >"$out" ||
		die "cpio/gzip failed building $out"
	rm -rf "$st"
	[[ -s $out ]] || die "empty initramfs $out"
}

cmd_initramfs() {
	parse_opts "$@"
	[[ -n $OUT ]] || OUT="$CACHE/initramfs-$K.cpio.gz"
	build_initramfs "$OUT"
	printf '%s\n' "$OUT"
}

# ---------------------------------------------------------------- run
cmd_run() {
	parse_opts "$@"
	[[ ${#BINS[@]} -gt 0 ]] || die "run: give at least one test binary (see vm/rig.sh --help)"
	local img qroot rundir log initrd cmdline rc=0 t0 t1 result
	img=$(kernel_image)
	[[ -f $img ]] || die "kernel image $img missing"
	qroot="$CACHE/qemu/current/root"
	[[ -x $qroot/usr/bin/qemu-system-x86_64 ]] || die "qemu not fetched: run vm/rig.sh fetch"
	# keep a week of run logs
	find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -mtime +7 -exec rm -rf {} + 2>/dev/null || true
	rundir="$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$K$(iommu_tag -iommu)-$$"
	mkdir -p "$rundir"
	log="$rundir/serial.log"
	initrd="$rundir/initramfs.cpio.gz"
	build_initramfs "$initrd"

	cmdline="console=ttyS0 panic=-1"
	local qargs=(-accel tcg -no-reboot -nographic -monitor none -serial stdio -nic none -vga none
		-m "$MEM" -smp "$SMP" -L "$qroot/usr/share/qemu" -L "$qroot/usr/share/seabios"
		-kernel "$img" -initrd "$initrd")
	if [[ $IOMMU == 1 ]]; then
		# intel-iommu must come before the PCI devices it translates for.
		# shellcheck disable=SC2054 # commas are qemu syntax
		qargs+=(-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on
			-device cirrus-vga -device virtio-gpu-pci)
		cmdline+=" intel_iommu=on iommu.strict=1"
	else
		qargs+=(-machine "$MACHINE" -device cirrus-vga)
	fi
	[[ $K == custom* ]] && cmdline+=" cma=$CUSTOM_CMA"
	[[ -n $APPEND ]] && cmdline+=" $APPEND"
	qargs+=(-append "$cmdline")
	printf '%q ' qemu-system-x86_64 "${qargs[@]}" >"$rundir/qemu.cmd"
	echo >>"$rundir/qemu.cmd"

	log "booting $K kernel$(iommu_tag ' with intel-iommu') (${#BINS[@]} binaries, timeout ${TIMEOUT}s), log: $log"
	t0=$(date +%s.%N)
	set +e
	trap - ERR # qemu's status is examined below
	(
		qemu_env "$qroot"
		exec timeout -k 10 "$TIMEOUT" "$qroot/usr/bin/qemu-system-x86_64" "${qargs[@]}" </dev/null 2>&1
	) | if [[ $QUIET == 1 ]]; then cat >"$log"; else tee "$log"; fi
	rc=${PIPESTATUS[0]}
	set -e
	trap 'on_err $LINENO $?' ERR
	t1=$(date +%s.%N)
	rm -f "$initrd"
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	result=$(tr -d '\r' <"$log" | grep -aoE 'DMAPLACE-RESULT: .*' || true)
	if [[ $QUIET == 1 && $result != "DMAPLACE-RESULT: PASS" ]]; then
		tail -n 60 "$log" >&2
	fi
	tr -d '\r' <"$log" | grep -aE '^DMAPLACE-EXIT: ' | sed 's/^/[rig]   /' >&2 || true
	if [[ $rc -eq 124 || $rc -eq 137 ]]; then
		die "guest timed out after ${TIMEOUT}s ($K kernel); log: $log"
	fi
	[[ $rc -eq 0 ]] || die "qemu exited with status $rc ($K kernel); log: $log"
	if [[ $(grep -c . <<<"$result") -ne 1 ]]; then
		die "expected exactly one DMAPLACE-RESULT line, got $(grep -c . <<<"$result") (kernel panic or init crash?); log: $log"
	fi
	[[ $result == "DMAPLACE-RESULT: PASS" ]] || die "guest reported ${result#DMAPLACE-RESULT: } ($K kernel); log: $log"
	log "PASS on $K kernel$(iommu_tag ' (iommu)') in ${secs}s; log: $log"
}

# ---------------------------------------------------------------- smoke / all
build_probe() {
	local target="$CACHE/probe-target"
	(
		cd "$RIG_DIR/probe"
		RUSTUP_TOOLCHAIN=${DMAPLACE_PROBE_TOOLCHAIN:-stable} CARGO_TARGET_DIR=$target \
			RUSTFLAGS='-C target-feature=+crt-static' \
			cargo build --release --target x86_64-unknown-linux-gnu -q >&2
	) || die "building vm/probe failed"
	local bin="$target/x86_64-unknown-linux-gnu/release/dmaplace-vm-probe"
	[[ -x $bin ]] || die "no probe binary at $bin"
	printf '%s\n' "$bin"
}

cmd_smoke() {
	local probe kmod
	probe=$(build_probe)
	kmod="$(cmd_kernel_dir)/.dmaplace-kmod-probe/dmaplace_rig_probe.ko"
	[[ -f $kmod ]] || die "missing $kmod: run vm/rig.sh kernel"
	"$RIG_DIR/rig.sh" run --kernel debian "$@" "$probe"
	"$RIG_DIR/rig.sh" run --kernel debian --iommu "$@" "$probe"
	"$RIG_DIR/rig.sh" run --kernel custom --insmod "$kmod" "$@" "$probe"
	"$RIG_DIR/rig.sh" run --kernel custom --iommu --insmod "$kmod" "$@" "$probe"
	log "smoke PASS: debian, debian --iommu, custom, custom --iommu"
}

cmd_all() {
	local steps=(fetch kernel smoke) s t0 t1 summary=() start
	start=$(date +%s)
	for s in "${steps[@]}"; do
		t0=$(date +%s)
		"$RIG_DIR/rig.sh" "$s" || die "step '$s' failed after $(($(date +%s) - t0))s"
		t1=$(date +%s)
		summary+=("$(printf '%-8s %5ss' "$s" $((t1 - t0)))")
	done
	printf '\n[rig] timings:\n' >&2
	printf '[rig]   %s\n' "${summary[@]}" >&2
	printf '[rig]   %-8s %5ss\n' total $(($(date +%s) - start)) >&2
}

main() {
	[[ $# -ge 1 ]] || {
		usage >&2
		exit 2
	}
	local cmd=$1
	shift
	case $cmd in
	fetch) cmd_fetch ;;
	kernel) cmd_kernel "$@" ;;
	kernel-dir) parse_flavour "$@" && cmd_kernel_dir ;;
	kernel-env) cmd_kernel_env "$@" ;;
	initramfs) cmd_initramfs "$@" ;;
	run) cmd_run "$@" ;;
	smoke) cmd_smoke "$@" ;;
	all) cmd_all ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		die "unknown command '$cmd'"
		;;
	esac
}

main "$@"
exit $?
