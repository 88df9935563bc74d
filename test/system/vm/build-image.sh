#!/usr/bin/env bash
# Build the kernel + base initramfs for the system-test VM (test/helpers/vm.ts).
#
# Debian 12's own kernel (the package linux-image-amd64 depends on, -unsigned
# variant preferred), busybox-static and nvme-cli (with exactly the shared
# libraries its binary needs) are fetched with `apt-get download` and unpacked
# with dpkg-deb into a cache OUTSIDE the git tree; nothing is installed on the
# host. Only the modules the NVMe/TCP tests need (plus their dependency
# closure) go into the image, so it stays ~12 MB and boots in seconds.
#
# Per-test files (/init, the guest library, the scenario script) are NOT in
# this image: runGuest() appends them as a second cpio archive on every boot,
# so editing a guest script never triggers a rebuild.
#
# Idempotent: a stamp (inputs + hash of this script) makes a second run exit
# at once. A flock serialises concurrent builds from parallel jest workers.
# The kernel package chosen first is pinned in the cache; REP_VM_REFRESH=1
# re-resolves it. Prints "kernel=PATH" and "initrd=PATH" on success.
set -euo pipefail

CACHE=${REP_VM_CACHE:-$HOME/.cache/blockrep-vm}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

# Modules (dependencies are added automatically). nvmet/nvmet-tcp/brd give a
# kernel reference target inside the guest; ext4 serves file-system checks.
MODULES="virtio_pci virtio_net nvme_core nvme_fabrics nvme_tcp nvmet nvmet_tcp configfs brd ext4"
# crc32c implementations for header/data digests (loaded by alias on demand);
# absent ones (built into the kernel, or not in this version) are skipped.
OPTIONAL_MODULES="crc32c_intel crc32c_generic libcrc32c"
# nvme-cli 2.3 on Debian 12 and the packages of every library it loads.
NVME_PKGS="nvme-cli libnvme1 libjson-c5 libssl3 libdbus-1-3 libsystemd0 libc6 zlib1g libcap2 libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1"

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$CACHE/debs"
CACHE=$(cd "$CACHE" && pwd -P)
if [ "$(git -C "$CACHE" rev-parse --is-inside-work-tree 2>/dev/null)" = true ]; then
  die "cache $CACHE is inside a git work tree; set REP_VM_CACHE elsewhere"
fi
for t in apt-get apt-cache dpkg-deb flock gzip sha256sum; do
  command -v "$t" >/dev/null || die "missing host tool: $t"
done

exec 9>"$CACHE/.lock"
flock 9

# ---------------------------------------------------------------- stamp ----
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo -n)
updated=0
apt_update_once() {
  [ "$updated" = 0 ] || return 0
  updated=1
  log "apt-get update"
  "${SUDO[@]}" apt-get -q update >&2 || log "apt-get update failed (continuing)"
}

resolve_kernel() {
  local dep
  dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  if [ -z "$dep" ]; then
    apt_update_once
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  fi
  [ -n "$dep" ] || return 1
  if apt-cache show "$dep-unsigned" >/dev/null 2>&1; then echo "$dep-unsigned"; else echo "$dep"; fi
}

if [ "${REP_VM_REFRESH:-0}" = 1 ] || [ ! -s "$CACHE/kernel.pkg" ]; then
  kpkg=$(resolve_kernel) || die "cannot resolve the kernel behind linux-image-amd64 (apt lists missing?)"
  echo "$kpkg" > "$CACHE/kernel.pkg"
fi
KPKG=$(cat "$CACHE/kernel.pkg")
STAMP="kernel=$KPKG modules=$MODULES/$OPTIONAL_MODULES nvme=$NVME_PKGS script=$(sha256sum "$SELF" | cut -c1-16)"
if [ -s "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$STAMP" ] &&
   [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initrd.gz" ]; then
  echo "kernel=$CACHE/vmlinuz"; echo "initrd=$CACHE/initrd.gz"
  exit 0
fi
t0=$(date +%s)
log "building into $CACHE (kernel package $KPKG)"

# ------------------------------------------------------------ downloads ----
deb_of() { ls "$CACHE/debs/$1"_*.deb 2>/dev/null | sort | tail -n 1; }
want=""
for p in "$KPKG" busybox-static $NVME_PKGS; do [ -n "$(deb_of "$p")" ] || want="$want $p"; done
if [ -n "$want" ]; then
  log "apt-get download$want"
  dl() { (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download $want >&2); }
  dl || { apt_update_once; dl; } || die "apt-get download failed"
fi

WORK="$CACHE/work"
rm -rf "$WORK"
mkdir -p "$WORK/k" "$WORK/u" "$WORK/root"
trap 'rm -rf "$WORK"' EXIT

# --------------------------------------------------------------- kernel ----
# Only boot/ and the module tree are needed; unpack straight from the tar stream.
dpkg-deb --fsys-tarfile "$(deb_of "$KPKG")" | tar -x -C "$WORK/k" --wildcards './boot/vmlinuz-*' './lib/modules/*'
KVER=$(ls "$WORK/k/lib/modules" | sort | tail -n 1)
[ -n "$KVER" ] || die "no lib/modules in $KPKG"
KDIR="$WORK/k/lib/modules/$KVER"

# Dependency closure from each module's own .modinfo "depends=" string (no
# full depmod over ~4000 modules needed).
declare -A MODPATH=() SEEN=()
while IFS= read -r f; do
  n=${f##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$f
done < <(find "$KDIR/kernel" -name '*.ko*')
ko_cat() { case "$1" in *.xz) xz -dc "$1" ;; *.zst) zstd -qdc "$1" ;; *) cat "$1" ;; esac; }
add_module() {
  local n=${1//-/_} f deps d
  [ -z "${SEEN[$n]:-}" ] || return 0
  SEEN[$n]=1
  f=${MODPATH[$n]:-}
  [ -n "$f" ] || return 1
  local dst="$WORK/root/lib/modules/$KVER/${f#"$KDIR"/}"
  dst=${dst%.xz}; dst=${dst%.zst}
  mkdir -p "${dst%/*}"
  ko_cat "$f" > "$dst"
  deps=$(ko_cat "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1)
  for d in ${deps//,/ }; do add_module "$d" || die "module $n needs $d, which is missing"; done
}
for m in $MODULES; do
  if ! add_module "$m"; then
    grep -qw "$m" <(sed 's/-/_/g' "$KDIR/modules.builtin" 2>/dev/null) || die "module $m not in $KPKG"
  fi
done
for m in $OPTIONAL_MODULES; do add_module "$m" || log "optional module $m not available (built in or absent)"; done
cp "$KDIR"/modules.builtin* "$KDIR/modules.order" "$WORK/root/lib/modules/$KVER/" 2>/dev/null || true

# ------------------------------------------------------------- busybox -----
dpkg-deb -x "$(deb_of busybox-static)" "$WORK/u"
BB="$WORK/u/bin/busybox"
"$BB" true || die "busybox-static does not run on this host"
# modules.dep / modules.alias for the staged subset, so modprobe (and the
# kernel's request_module for crc32c) work in the guest
"$BB" depmod -b "$WORK/root" "$KVER"
mkdir -p "$WORK/root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root}
cp "$BB" "$WORK/root/bin/busybox"
ln -s busybox "$WORK/root/bin/sh"

# ------------------------------------------------------------ nvme-cli -----
for p in $NVME_PKGS; do dpkg-deb -x "$(deb_of "$p")" "$WORK/u"; done
LDSO=$(readlink -f "$WORK/u/lib64/ld-linux-x86-64.so.2")
NVME="$WORK/u/usr/sbin/nvme"
LIBPATH="$WORK/u/lib/x86_64-linux-gnu:$WORK/u/usr/lib/x86_64-linux-gnu"
# --list makes the downloaded loader resolve the libraries without running nvme
libs=$("$LDSO" --library-path "$LIBPATH" --list "$NVME") || die "cannot resolve the libraries of nvme-cli"
! grep -q 'not found' <<<"$libs" || die "nvme-cli has unresolved libraries: $(grep 'not found' <<<"$libs" | tr '\n' ' ')"
mkdir -p "$WORK/root/lib/x86_64-linux-gnu" "$WORK/root/lib64"
cp "$NVME" "$WORK/root/usr/sbin/nvme"
cp "$LDSO" "$WORK/root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$WORK/root/lib64/ld-linux-x86-64.so.2"
awk '$2 == "=>" && $3 ~ /^\// && $1 !~ /\// { print $1, $3 }' <<<"$libs" | while read -r so path; do
  cp -L "$path" "$WORK/root/lib/x86_64-linux-gnu/$so"
done
mkdir -p "$WORK/root/etc/nvme"

# ------------------------------------------------------------- archive -----
echo "$STAMP kver=$KVER" > "$WORK/root/etc/blockrep-vm-build"
(cd "$WORK/root" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -4 > "$CACHE/initrd.gz.tmp"
cp "$WORK/k/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.tmp"
mv "$CACHE/initrd.gz.tmp" "$CACHE/initrd.gz"
mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
echo "$STAMP" > "$CACHE/stamp"
log "done in $(( $(date +%s) - t0 )) s: $KVER, ${#SEEN[@]} modules, initrd $(du -h "$CACHE/initrd.gz" | cut -f1)"
echo "kernel=$CACHE/vmlinuz"; echo "initrd=$CACHE/initrd.gz"
