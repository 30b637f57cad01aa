#!/usr/bin/env bash
# Installs what `make test` and `make demo` need from Debian's packages on a
# fresh Debian 12 or 13 machine: QEMU 8.2+ (cpr-reboot; from bookworm-backports on 12,
# Debian's own 10.0 on 13), nasm for the test guest, daemontools for the supervised-VM test,
# python3-venv, and mmdebstrap and e2fsprogs for the virtual hypervisor lab's host image.
set -euo pipefail

QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios qemu-utils)
# (shellcheck too: without it ansible-test sanity skips its shell test with only a warning)
OTHER_PACKAGES=(nasm daemontools python3-venv rsync git ca-certificates mmdebstrap e2fsprogs openssh-client shellcheck)

qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null || return 1
  local version
  version=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  read -r major minor <<<"$version"
  (( major > 8 || (major == 8 && minor >= 2) ))
}

others_ok() {
  command -v nasm >/dev/null && command -v supervise >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
    && command -v rsync >/dev/null && command -v mmdebstrap >/dev/null && command -v mkfs.ext4 >/dev/null \
    && command -v ssh-keygen >/dev/null && command -v shellcheck >/dev/null
}

if qemu_ok && others_ok; then
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-system-packages: run as root or install sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

# shellcheck source=/dev/null  # the running system's, read at run time
. /etc/os-release
QEMU_SUITE=
case "${ID:-}:${VERSION_CODENAME:-}" in
  # Debian 12's own QEMU is 7.2, without cpr-reboot: every QEMU package must come from backports together.
  debian:bookworm) QEMU_SUITE=bookworm-backports ;;
  debian:trixie) ;;  # Debian 13's own QEMU is 10.0
  *)
    echo "install-system-packages: this script knows Debian 12 (bookworm) and 13 (trixie); on ${PRETTY_NAME:-this OS} install QEMU >= 8.2, nasm, daemontools, rsync, python3-venv, mmdebstrap, e2fsprogs, openssh-client and shellcheck yourself." >&2
    exit 1 ;;
esac

if [ -n "$QEMU_SUITE" ]; then
  if ! grep -rqs "$QEMU_SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    "${SUDO[@]}" tee "/etc/apt/sources.list.d/$QEMU_SUITE.sources" >/dev/null <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $QEMU_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  fi
  QEMU_PACKAGES=("${QEMU_PACKAGES[@]/%//$QEMU_SUITE}")
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${QEMU_PACKAGES[@]}" "${OTHER_PACKAGES[@]}"
qemu_ok || { echo "install-system-packages: QEMU >= 8.2 is still missing" >&2; exit 1; }
