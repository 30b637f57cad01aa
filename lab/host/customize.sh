#!/bin/sh
# mmdebstrap customize hook for the lab's hypervisor-host image; $1 is the root filesystem.
# Environment: LAB_PUBKEY (file), LAB_GUEST_DISK (file), LAB_NEWER_KERNEL_META (apt package).
set -eu
root="$1"

# A small initramfs: under TCG every megabyte of it costs boot time, and kexec reads it too.
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
# The pmem and dax drivers too: /dev/dax0.0 then exists before userspace, and the restore unit need not wait for it.
# libnvdimm by name: ndctl's modprobe.d rule (install libnvdimm ... ndctl load-keys) hides it from the
# dependencies initramfs-tools copies, and nd_e820 and nfit then fail to load there (Unknown symbol), which
# left /dev/dax0.0 to udev in the real root, 10 s later in the lab.
printf '%s\n' virtio_pci virtio_blk crc32c_generic libnvdimm nfit nd_e820 nd_pmem dax_pmem device_dax \
  >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all

# The newer kernel is not installed: it waits in a local apt repository, which the
# kernel_update role installs from as it would from a mirror on a real fleet.
newer=$(chroot "$root" apt-cache depends "$LAB_NEWER_KERNEL_META" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
[ -n "$newer" ] || { echo "customize: no package behind $LAB_NEWER_KERNEL_META" >&2; exit 1; }
mkdir -p "$root/srv/liveupdate-repo"
# shellcheck disable=SC2016  # $1 is the inner shell's argument, not ours: no string is built from input
chroot "$root" sh -c 'cd /srv/liveupdate-repo && apt-get download "$1"' sh "$newer"
chroot "$root" sh -c 'cd /srv/liveupdate-repo && apt-ftparchive packages . >Packages'
echo "$newer" >"$root/srv/liveupdate-repo/NEWER_KERNEL"
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
echo 'deb [trusted=yes] file:/srv/liveupdate-repo ./' >"$root/etc/apt/sources.list.d/liveupdate-lab.list"
chroot "$root" apt-get update -q
chroot "$root" apt-get clean

# kexec-tools must not turn every reboot into a kexec: the lab tests both. Its boot-time script and ndctl's monitor
# (no DIMMs to monitor here) only compete with the restore unit for the host's CPUs in the blackout.
sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$root/etc/default/kexec"
chroot "$root" systemctl disable kexec-load.service ndctl-monitor.service
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
