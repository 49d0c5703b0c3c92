#!/usr/bin/env python3
"""Check the lab guest's vdb (with the guest paused): the static region matches its checksum and
the write sequence is unbroken. Record n ("FERRYSEQ n") lives in block n mod K of the sequence
region; the guest writes n = 1, 2, 3, ... in order, so with M the highest record every block i
must hold the highest n <= M with n = i (mod K). A lost or stale write breaks that.
Usage: verify-vdb.py PATH STATIC_MB STATIC_SHA256 [SIZE]   (SIZE: the guest sees only the first
SIZE bytes of PATH, a storage slice). FERRY_LAB_WRITE_KIB (default 4): the size of a record; a
record of more than one block fills its slot, every block saying the same n."""
import hashlib
import mmap
import os
import sys

BS = 4096


def read_all(path):
    # O_DIRECT: the guest wrote with cache=none; never trust a page cache here.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        chunk = 1 << 20
        buf = mmap.mmap(-1, chunk)
        out = bytearray()
        while len(out) < size:
            n = os.readv(fd, [buf])
            if n <= 0:
                break
            out += buf[:n]
        return bytes(out)
    finally:
        os.close(fd)


def main():
    path, static_mb, want_sha = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = read_all(path)
    if len(sys.argv) > 4:
        data = data[: int(sys.argv[4])]
    static = static_mb << 20
    got_sha = hashlib.sha256(data[:static]).hexdigest()
    if got_sha != want_sha:
        print(f"FAIL vdb {path}: static region checksum {got_sha} != {want_sha}")
        return 1
    region = data[static:]
    r = int(os.environ.get("FERRY_LAB_WRITE_KIB", "4")) * 1024 // BS  # blocks per record
    k = len(region) // (BS * r)
    seqs, torn = [], []
    for i in range(k):
        slot = []
        for b in range(r):
            blk = region[(i * r + b) * BS:(i * r + b + 1) * BS]
            if blk.startswith(b"FERRYSEQ "):
                slot.append(int(blk[9:blk.index(b"\n")]))
            elif blk.strip(b"\0"):
                print(f"FAIL vdb {path}: block {b} of slot {i} of the sequence region holds garbage")
                return 1
            else:
                slot.append(0)
        seqs.append(max(slot))
        if len(set(slot)) != 1:
            torn.append((i, sorted(set(slot))))
    m = max(seqs)
    # A record of many blocks may be half written when the guest was paused (the latest one,
    # still in flight); any other torn slot is a lost write.
    for i, vals in torn:
        if vals[-1] != m or len(vals) != 2 or vals[0] != max(m - k, 0):
            print(f"FAIL vdb {path}: slot {i} holds a torn record: {vals}")
            return 1
    if m == 0:
        print(f"FAIL vdb {path}: no sequence record at all")
        return 1
    bad = []
    for i, v in enumerate(seqs):
        want = m - ((m - i) % k)
        if want < 1:
            want = 0
        if v != want:
            bad.append((i, v, want))
    if bad:
        i, v, want = bad[0]
        print(f"FAIL vdb {path}: {len(bad)} stale or lost record(s); block {i} holds {v}, expected {want} (latest {m})")
        return 1
    sliced = f" (a storage slice of {len(data)} bytes)" if len(sys.argv) > 4 else ""
    print(f"ok vdb {path}{sliced}: static region intact, write sequence unbroken through record {m} ({k} slots)")
    return 0


sys.exit(main())
