#!/bin/busybox sh
# Init of the lab guest (busybox only). It proves a migration kept the guest whole:
# - vdb: bytes [0, STATIC) hold a static pattern written by `lab up` (checksum known on the host);
#   from STATIC on, the guest writes a sequence with O_DIRECT: record n (a 4 KiB block
#   "FERRYSEQ <n>") goes to block (n mod K) of that region, n = 1, 2, 3, ... without gaps, so a
#   lost or stale write shows as a block that does not hold the latest n of its residue class;
#   with ferry.write_kib=W > 4, each record is W KiB (every 4 KiB block of it says "FERRYSEQ <n>",
#   padded with spaces) in slot (n mod K) of W KiB: a guest that writes hard;
# - RAM: a region of ferry.dirty_mb MiB is rewritten at ferry.dirty_rate MiB/s;
# - serial console: "FERRY-HB <beat> seq=<n>" every second (libvirt logs it on the running host).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    insmod "/lib/modules/$m.ko" 2>/dev/null
done

arg() { # arg NAME DEFAULT: a ferry.NAME=VALUE from the kernel command line
    v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^ferry\.$1=//p" | tail -n 1)
    echo "${v:-$2}"
}
STATIC_MB=$(arg static_mb 8)
DIRTY_MB=$(arg dirty_mb 32)
DIRTY_RATE=$(arg dirty_rate 4)
WRITE_DELAY_US=$(arg write_delay_us 20000)
WRITE_KIB=$(arg write_kib 4)

i=0
while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
if [ ! -b /dev/vdb ]; then echo "FERRY-ERROR no /dev/vdb" >/dev/ttyS0; exec sh; fi

BS=4096
STATIC_BLOCKS=$((STATIC_MB * 1024 * 1024 / BS))
R=$((WRITE_KIB / 4))  # blocks per record
K=$(( ($(blockdev --getsize64 /dev/vdb) / BS - STATIC_BLOCKS) / R ))
# Continue after the highest record already on the disk (a cold boot after a migration). The
# records fill the region from its start (record n in slot n mod K), so the scan stops at the
# first MiB without one: a fresh disk of any size boots at once.
last=0
off=0
while [ $off -lt $((K * R)) ]; do
    top=$(dd if=/dev/vdb bs=$BS skip=$((STATIC_BLOCKS + off)) count=256 2>/dev/null | strings -n 9 \
        | sed -n 's/^FERRYSEQ \([0-9]*\) *$/\1/p' | sort -n | tail -n 1)
    [ -n "$top" ] || break
    [ "$top" -gt "$last" ] && last=$top
    off=$((off + 256))
done
seq=$last
echo "FERRY-BOOT k=$K static_blocks=$STATIC_BLOCKS start_seq=$seq" >/dev/ttyS0

writer() {
    while :; do
        seq=$((seq + 1))
        if [ "$R" = 1 ]; then
            printf 'FERRYSEQ %d\n' $seq \
                | dd of=/dev/vdb bs=$BS count=1 seek=$((STATIC_BLOCKS + seq % K)) \
                    conv=sync,notrunc oflag=direct 2>/dev/null
        else
            yes "$(printf '%-4095s' "FERRYSEQ $seq")" \
                | dd of=/dev/vdb bs=$((BS * R)) count=1 iflag=fullblock \
                    seek=$((STATIC_BLOCKS / R + seq % K)) conv=notrunc oflag=direct 2>/dev/null
        fi || echo "FERRY-ERROR write $seq failed" >/dev/ttyS0
        echo $seq >/tmp/seq.new && mv /tmp/seq.new /tmp/seq
        usleep "$WRITE_DELAY_US"
    done
}

dirtier() {
    [ "$DIRTY_MB" -gt 0 ] || return 0
    mkdir -p /tmp/dirty
    dd if=/dev/urandom of=/tmp/dirty/src bs=1M count=1 2>/dev/null
    j=0
    while :; do
        n=0
        while [ $n -lt "$DIRTY_RATE" ]; do
            dd if=/tmp/dirty/src of=/tmp/dirty/region bs=1M seek=$((j % DIRTY_MB)) count=1 \
                conv=notrunc 2>/dev/null
            j=$((j + 1)); n=$((n + 1))
        done
        sleep 1
    done
}

writer &
dirtier &
beat=0
while :; do
    beat=$((beat + 1))
    echo "FERRY-HB $beat seq=$(cat /tmp/seq 2>/dev/null)" >/dev/ttyS0
    sleep 1
done
