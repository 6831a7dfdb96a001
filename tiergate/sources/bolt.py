"""Read-only lookups in a bbolt database (containerd's meta.db) while its owner writes to it.

bbolt never overwrites a page reachable from the last committed meta page:
pages a commit frees become reusable only from the transaction after the
next one. So a lookup that reads the meta (txid T), walks the tree with
pread, and then finds T still the newest committed txid has read a
consistent snapshot. Otherwise it retries (bounded) and then gives up: a
caller refuses rather than guess. No lock is taken (containerd holds bbolt's
flock) and nothing is written. Standard library only.
"""

from __future__ import annotations

import os
import struct

MAGIC = 0xED0CDAED
BRANCH, LEAF, META = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
_HDR = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic, version, page size, flags, root, seq, freelist, pgid, txid, checksum
_BRANCH = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET = struct.Struct("<QQ")  # root pgid, sequence
MAX_PAGES = 4096  # bound on pages one lookup reads (a corrupt file cannot loop us)


class BoltError(Exception):
    pass


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class Snapshot:
    """One consistent view: `get(path)` walks nested buckets; `verify()` says whether it held."""

    def __init__(self, fd: int):
        self.fd = fd
        self.reads = 0
        head = os.pread(fd, 4096, 0)
        meta = self._meta(head, checked=False)
        if meta is None:
            raise BoltError("not a bolt database (bad magic)")
        # A torn page 0 may carry a wrong size: then bbolt's rule, the OS page size, finds page 1.
        self.page_size = meta[2] if self._meta(head) else os.sysconf("SC_PAGE_SIZE")
        self.txid, self.root = self._newest()

    @staticmethod
    def _meta(page: bytes, checked: bool = True):
        if len(page) < _HDR.size + _META.size:
            return None
        fields = _META.unpack_from(page, _HDR.size)
        if fields[0] != MAGIC or fields[1] != 2 or not 512 <= fields[2] <= 1 << 20:
            return None
        if checked and _fnv64a(page[_HDR.size:_HDR.size + _META.size - 8]) != fields[9]:
            return None  # torn or stale: the other meta page counts
        return fields

    def _newest(self) -> tuple[int, int]:
        metas = [m for m in (self._meta(os.pread(self.fd, self.page_size, i * self.page_size)) for i in (0, 1)) if m]
        if not metas:
            raise BoltError("no valid meta page")
        best = max(metas, key=lambda m: m[8])
        return best[8], best[4]

    def verify(self) -> bool:
        """No commit happened since this snapshot was taken: every page read belonged to it."""
        return self._newest()[0] == self.txid

    def _page(self, pgid: int) -> bytes:
        self.reads += 1
        if self.reads > MAX_PAGES:
            raise BoltError("lookup read too many pages")
        head = os.pread(self.fd, self.page_size, pgid * self.page_size)
        if len(head) < _HDR.size:
            raise BoltError(f"page {pgid} beyond the end of the file")
        _, _, _, overflow = _HDR.unpack_from(head)
        if overflow:
            head = os.pread(self.fd, (overflow + 1) * self.page_size, pgid * self.page_size)
        return head

    def _find(self, page: bytes, key: bytes) -> tuple[int, bytes] | None:
        """(leaf flags, value) of key in the tree whose root page is `page`."""
        for _ in range(64):  # tree depth bound
            _, flags, count, _ = _HDR.unpack_from(page)
            if flags & LEAF:
                for i in range(count):
                    off = _HDR.size + i * _LEAF.size
                    eflags, pos, ksize, vsize = _LEAF.unpack_from(page, off)
                    k = page[off + pos:off + pos + ksize]
                    if k == key:
                        return eflags, page[off + pos + ksize:off + pos + ksize + vsize]
                return None
            if not flags & BRANCH:
                raise BoltError(f"unexpected page type {flags:#x}")
            child = None
            for i in range(count):
                off = _HDR.size + i * _BRANCH.size
                pos, ksize, pgid = _BRANCH.unpack_from(page, off)
                if page[off + pos:off + pos + ksize] <= key:
                    child = pgid
                else:
                    break
            if child is None:
                return None
            page = self._page(child)
        raise BoltError("tree too deep")

    def _bucket_root(self, value: bytes) -> bytes:
        root, _ = _BUCKET.unpack_from(value)
        return value[_BUCKET.size:] if root == 0 else self._page(root)  # 0: an inline bucket

    def get(self, *path: bytes) -> bytes | dict | None:
        """The value at path (bucket names, then a key); a bucket's own keys as a dict of values."""
        page = self._page(self.root)
        for i, name in enumerate(path):
            found = self._find(page, name)
            if found is None:
                return None
            flags, value = found
            if not flags & BUCKET_LEAF:
                return value if i == len(path) - 1 else None
            page = self._bucket_root(value)
        return self._items(page)

    def _items(self, page: bytes, depth: int = 0) -> dict:
        """Every key of a bucket's tree: plain values, nested buckets as None."""
        if depth > 64:
            raise BoltError("tree too deep")
        out: dict = {}
        _, flags, count, _ = _HDR.unpack_from(page)
        for i in range(count):
            if flags & LEAF:
                off = _HDR.size + i * _LEAF.size
                eflags, pos, ksize, vsize = _LEAF.unpack_from(page, off)
                key = page[off + pos:off + pos + ksize]
                out[key] = None if eflags & BUCKET_LEAF else page[off + pos + ksize:off + pos + ksize + vsize]
            else:
                off = _HDR.size + i * _BRANCH.size
                _, _, pgid = _BRANCH.unpack_from(page, off)
                out.update(self._items(self._page(pgid), depth + 1))
        return out


def read(path: str, lookup, attempts: int = 5):
    """lookup(snapshot) on a consistent snapshot of the database at path; BoltError when none held."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        for _ in range(attempts):
            snap = Snapshot(fd)
            try:
                result = lookup(snap)
            except (BoltError, struct.error, IndexError) as exc:
                if snap.verify():
                    raise BoltError(f"{path} looks corrupt: {exc}") from None
                continue  # a commit moved pages under us: read again
            if snap.verify():
                return result
        raise BoltError(f"{path} kept changing while read ({attempts} attempts)")
    finally:
        os.close(fd)
