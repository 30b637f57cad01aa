#!/bin/sh
# mmdebstrap customize hook for the lab's real Linux test guest; $1 is the root filesystem.
# Environment: LAB_PUBKEY (file): the key that logs in as root.
set -eu
root="$1"

# The guest boots with -kernel and this initramfs: virtio for its disk, network and agent channel, ext4 for its root.
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_console ext4 crc32c_generic >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all
# Drivers no VM of ours has: a smaller image, built and copied faster.
for modules in "$root"/lib/modules/*; do
  rm -rf "$modules/kernel/drivers/gpu" "$modules/kernel/drivers/net/wireless" "$modules/kernel/drivers/media" \
    "$modules/kernel/drivers/infiniband" "$modules/kernel/drivers/staging" "$modules/kernel/sound" \
    "$modules/kernel/drivers/net/ethernet" "$modules/kernel/drivers/scsi" "$modules/kernel/drivers/isdn"
  chroot "$root" depmod "$(basename "$modules")"
done

printf 'linux-guest\n' >"$root/etc/hostname"
printf '/dev/vda / ext4 defaults,noatime 0 1\n' >"$root/etc/fstab"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/20-lab.network"
chroot "$root" systemctl enable systemd-networkd
printf 'UseDNS no\nPasswordAuthentication no\n' >"$root/etc/ssh/sshd_config.d/lab.conf"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$LAB_PUBKEY" "$root/root/.ssh/authorized_keys"
# Nothing but the engine may set this guest's clock: the tests measure what a resume does to it.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  systemd-timesyncd.service
