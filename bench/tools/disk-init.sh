#!/bin/sh
# /init for bench/disk.py: appended to the default initramfs (later cpio archives override earlier
# members), so the kernel runs this instead of the project's /init. Same file on every hypervisor; the
# kernel command line says which device to use and how much to do:
#   diskbench.dev=/dev/xvdb|/dev/vda  diskbench.mib=256  diskbench.rand_s=10
# Prints TIME/RANDREAD/DISKBENCH lines (guest clock) and MARK: lines (timed by the host), then powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
modprobe xen-blkfront 2>/dev/null
# The default initramfs has virtio_blk but not virtio_pci; the harness appends both with their
# dependencies and lists them here in load order (insmod of an already loaded one just fails).
for ko in $(cat /etc/diskbench.modules 2>/dev/null); do
    insmod "/lib/modules/$(uname -r)/$ko" 2>/dev/null
done

dev=/dev/xvdb
mib=256
rand_s=10
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    diskbench.dev=*) dev="${arg#diskbench.dev=}" ;;
    diskbench.mib=*) mib="${arg#diskbench.mib=}" ;;
    diskbench.rand_s=*) rand_s="${arg#diskbench.rand_s=}" ;;
    esac
done

finish() {
    echo "MARK:done"
    poweroff -f
    sleep 10
}

i=0
while [ ! -b "$dev" ] && [ "$i" -lt 100 ]; do  # the disk appears once the frontend has connected
    sleep 0.1
    i=$((i + 1))
done
if [ ! -b "$dev" ]; then
    echo "DISKBENCH:error $dev did not appear ($(ls /sys/block 2>/dev/null | tr '\n' ' '))"
    finish
fi
name="${dev#/dev/}"
echo "DISKBENCH:dev $dev sectors=$(cat /sys/block/$name/size) scheduler=$(cat /sys/block/$name/queue/scheduler 2>/dev/null | tr ' ' ,) max_sectors_kb=$(cat /sys/block/$name/queue/max_sectors_kb 2>/dev/null) clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"

echo "MARK:write_start"
t0=$(disktool clock)
if ! dd if=/dev/zero of="$dev" bs=1M count="$mib" oflag=direct 2>/tmp/dd.err; then
    echo "DISKBENCH:error write: $(tr '\n' ' ' </tmp/dd.err)"
    finish
fi
t1=$(disktool clock)
sync
t2=$(disktool clock)
echo "TIME write $t0 $t1 $t2"
echo "MARK:write_end"

echo "MARK:read_start"
t0=$(disktool clock)
if ! dd if="$dev" of=/dev/null bs=1M count="$mib" iflag=direct 2>/tmp/dd.err; then
    echo "DISKBENCH:error read: $(tr '\n' ' ' </tmp/dd.err)"
    finish
fi
t1=$(disktool clock)
echo "TIME read $t0 $t1 $t1"
echo "MARK:read_end"

echo "MARK:rand_start"
if ! disktool randread "$dev" "$rand_s" $((mib * 1048576)); then
    echo "DISKBENCH:error randread failed"
    finish
fi
echo "MARK:rand_end"
finish
