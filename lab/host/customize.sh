#!/bin/sh
# mmdebstrap customize hook for the lab's hypervisor-host image; $1 is the root filesystem.
# Environment: LAB_PUBKEY (file), LAB_GUEST_DISK (file), LAB_NEWER_KERNEL_META (apt package), LAB_BACKPORTS
# (suite), LAB_QEMU_PACKAGES (names, space-separated), LAB_SUITE (the image's release), LAB_ZIP_BYTECODE_CACHE (file).
set -eu
root="$1"

# dpkg without an fsync per file it unpacks: each one is a flush of the lab host's qcow2 disk, and the kernel
# package alone unpacks thousands of files. Lab hosts only; a host killed mid-install is no case of the lab.
echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/liveupdate-lab-unsafe-io"
# A small initramfs: under TCG every megabyte of it costs boot time, and kexec reads it too.
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
# The pmem and dax drivers too: /dev/dax0.0 then exists before userspace, and the restore unit need not wait for it.
# libnvdimm by name: ndctl's modprobe.d rule (install libnvdimm ... ndctl load-keys) hides it from the
# dependencies initramfs-tools copies, and nd_e820 and nfit then fail to load there (Unknown symbol), which
# left /dev/dax0.0 to udev in the real root, 10 s later in the lab.
printf '%s\n' virtio_pci virtio_blk crc32c_generic libnvdimm nfit nd_e820 nd_pmem dax_pmem device_dax \
  >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all

# The newer kernel and QEMU are not installed: they wait in a local trixie-backports repository, which the
# kernel_update role installs from as it would from a mirror on a real fleet. It holds what apt itself fetches to
# install them from trixie-backports: the kernel, the QEMU packages the image has, and what else that needs.
newer=$(chroot "$root" apt-cache -o APT::Default-Release="$LAB_BACKPORTS" depends "$LAB_NEWER_KERNEL_META" \
  | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
[ -n "$newer" ] || { echo "customize: no package behind $LAB_NEWER_KERNEL_META in $LAB_BACKPORTS" >&2; exit 1; }
repo=/srv/liveupdate-repo
mkdir -p "$root$repo/$LAB_SUITE" "$root$repo/$LAB_BACKPORTS"
chroot "$root" apt-get clean
# shellcheck disable=SC2086  # LAB_QEMU_PACKAGES is a list of package names, split on purpose
chroot "$root" apt-get install --yes --quiet --download-only --no-install-recommends \
  --target-release "$LAB_BACKPORTS" "$newer" $LAB_QEMU_PACKAGES
cp "$root"/var/cache/apt/archives/*.deb "$root$repo/$LAB_BACKPORTS/"
# trixie's own versions of the installed packages backports would replace: as on a real trixie host, they keep
# apt's priority 500 against backports' 100, so only a target release moves QEMU (or the kernel) there
for deb in "$root$repo/$LAB_BACKPORTS"/*.deb; do
  package=$(dpkg-deb -f "$deb" Package)
  # shellcheck disable=SC2016  # dpkg-query's format, not a shell expansion
  version=$(chroot "$root" dpkg-query -W -f '${Version}' "$package" 2>/dev/null || true)
  # shellcheck disable=SC2016  # $1 and $2 are the inner shell's arguments: no string is built from input
  [ -z "$version" ] || chroot "$root" sh -c 'cd "$1" && apt-get download --quiet "$2"' sh "$repo/$LAB_SUITE" "$package=$version"
done
# shellcheck disable=SC2016  # dpkg-query's format, not a shell expansion
installed=$(chroot "$root" dpkg-query -W -f '${Version}' qemu-system-x86)
set -- "$root$repo/$LAB_BACKPORTS"/qemu-system-x86_*.deb
offered=$(dpkg-deb -f "$1" Version)
[ "$installed" != "$offered" ] || { echo "customize: $LAB_BACKPORTS offers no newer QEMU than $installed" >&2; exit 1; }
echo "$installed $offered" >"$root$repo/QEMU_VERSIONS"
echo "$newer" >"$root$repo/NEWER_KERNEL"
# each a flat repository with its suite's Release fields; backports' flags as Debian sets them
for suite in "$LAB_SUITE" "$LAB_BACKPORTS"; do
  flags=""
  [ "$suite" = "$LAB_SUITE" ] || flags="-o APT::FTPArchive::Release::NotAutomatic=yes -o APT::FTPArchive::Release::ButAutomaticUpgrades=yes"
  # shellcheck disable=SC2016,SC2086  # the inner shell's own arguments; flags split on purpose
  chroot "$root" sh -c 'cd "$1" && apt-ftparchive packages . >Packages && shift && apt-ftparchive "$@" release . >Release' \
    sh "$repo/$suite" -o APT::FTPArchive::Release::Origin=Debian -o APT::FTPArchive::Release::Suite="$suite" \
    -o APT::FTPArchive::Release::Codename="$suite" $flags
done
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
printf 'deb [trusted=yes] file:%s/%s ./\n' "$repo" "$LAB_SUITE" "$repo" "$LAB_BACKPORTS" \
  >"$root/etc/apt/sources.list.d/liveupdate-lab.list"
chroot "$root" apt-get update -q
chroot "$root" apt-get clean

# kexec-tools must not turn every reboot into a kexec: the lab tests both (trixie's kexec-tools has no boot-time
# kexec-load.service left, only this setting). ndctl's monitor (no DIMMs to monitor here) only competes with the
# restore unit for the host's CPUs in the blackout.
sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$root/etc/default/kexec"
chroot "$root" systemctl disable ndctl-monitor.service
# Lab only: Python caches the bytecode of Ansible's module payloads, which zipimport compiles again on every task
# (lab/host/zip_bytecode_cache.py: on an idle TCG host a `command` task took 2.7 s with it, 3.3-3.6 s without).
# Written from inside the chroot: sitecustomize.py is an absolute symlink into /etc.
stdlib=$(chroot "$root" python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
install -m 0644 "$LAB_ZIP_BYTECODE_CACHE" "$root$stdlib/zip_bytecode_cache.py"
# shellcheck disable=SC2016  # $1 is the inner shell's argument: no string is built from input
chroot "$root" sh -c 'printf "\n# liveupdate.cpr lab image only\nimport zip_bytecode_cache\n" >>"$1"' sh "$stdlib/sitecustomize.py"
# Nothing may hold the dpkg lock or wake the disk during a rollout.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer

printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/20-lab.network"
chroot "$root" systemctl enable systemd-networkd
printf '/dev/vda / ext4 defaults,noatime 0 1\n' >"$root/etc/fstab"
printf 'UseDNS no\nPasswordAuthentication no\n' >"$root/etc/ssh/sshd_config.d/lab.conf"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$LAB_PUBKEY" "$root/root/.ssh/authorized_keys"
install -d -m 0700 "$root/var/lib/liveupdate-lab"
install -m 0600 "$LAB_GUEST_DISK" "$root/var/lib/liveupdate-lab/cpr-test-guest.img"
