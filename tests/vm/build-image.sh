#!/usr/bin/env bash
# Build one guest image for the VM tier:  build-image.sh RELEASE OUT_DIR [htcondor]
#
# OUT_DIR receives image.raw (ext4, the whole root file system), vmlinuz and initrd.img.
# Run it through tests/vm/run, which calls it inside a private mount namespace (debootstrap's
# and our chroot mounts vanish with it) and keys OUT_DIR by a hash of this recipe.
# With "htcondor": Debian's HTCondor too, configured as a one-machine pool (htcondor/), and a
# submit user, alice.
set -euo pipefail
release=$1 out=$2 flavour=${3:-}
here=$(cd "$(dirname "$0")" && pwd)

# The packages of the guest: systemd as PID 1 with D-Bus and udev, a stock Debian kernel, and
# the project's dependencies from Debian itself (python3-jeepney, python3-psutil, python3-pytest)
# so that nothing is fetched when a guest boots; procps for pgrep, used by the tests.
packages=systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,initramfs-tools,python3
packages+=,python3-jeepney,python3-psutil,python3-pytest,procps
if [ "$flavour" = htcondor ]; then
  # condor's Python bindings need the cffi backend, which debootstrap does not pull in
  packages+=,condor,python3-cffi-backend
fi

# The host's Debian archive (this machine can reach only it), else the public one.
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

root=$out/root
stage() { echo "build-image[$release]: $*" >&2; }

stage "debootstrap $release from $mirror"
debootstrap --variant=minbase --include="$packages" "$release" "$root" "$mirror" \
  > "$out/debootstrap.log" 2>&1 || { tail -n 30 "$out/debootstrap.log" >&2; exit 1; }

stage "configure"
echo csd-vm > "$root/etc/hostname"
if [ "$flavour" = htcondor ]; then
  # HTCondor looks its own host name up
  printf '127.0.0.1 localhost\n127.0.1.1 csd-vm\n' > "$root/etc/hosts"
  install -m 0644 "$here/htcondor/50-csd-pool.conf" "$root/etc/condor/config.d/50-csd-pool.conf"
  chroot "$root" useradd --create-home --shell /bin/bash alice
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sf /lib/systemd/system/condor.service "$root/etc/systemd/system/multi-user.target.wants/condor.service"
fi
# A fixed machine id: an empty one means "first boot", and systemd-firstboot may ask questions.
echo 0c5d0c5d0c5d0c5d0c5d0c5d0c5d0c5d > "$root/etc/machine-id"
printf '/dev/vda / ext4 rw 0 1\n' > "$root/etc/fstab"
# Nothing may write to the console we parse or wake up on a timer while tests run.
for unit in serial-getty@.service getty@.service systemd-firstboot.service apt-daily.timer \
            apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            systemd-timesyncd.service dpkg-db-backup.timer man-db.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
install -m 0755 "$here/guest/csd-vm-guest" "$root/usr/local/sbin/csd-vm-guest"
install -m 0755 "$here/guest/condor-systemd" "$root/usr/local/bin/condor-systemd"
install -m 0644 "$here/guest/csd-vm-guest.service" "$root/etc/systemd/system/csd-vm-guest.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../csd-vm-guest.service "$root/etc/systemd/system/multi-user.target.wants/csd-vm-guest.service"

stage "small initrd"
# Only what finds and mounts the root disk, and the 9p transport: loaded this early, the host's
# shares exist before csd-vm-guest runs (udev would load it late, racing with the mount).
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio > "$root/etc/initramfs-tools/modules"
mount -t proc proc "$root/proc"
chroot "$root" update-initramfs -u -k all > "$out/initramfs.log" 2>&1 \
  || { tail -n 30 "$out/initramfs.log" >&2; exit 1; }
umount "$root/proc"
cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)" "$out/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)" "$out/initrd.img"

stage "disk image"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale
mkfs.ext4 -q -F -L csd-root -d "$root" "$out/image.raw" 4G
rm -rf "$root"
stage "done: $(du -sh --apparent-size "$out/image.raw" | cut -f1) image, $(du -sh "$out/image.raw" | cut -f1) on disk"
