"""Would-be-dropped flows of audit containers, read from their own netns, for `tiergate collect`.

The audit ruleset (network/flows.py) keeps, in the container's netns, a counter
per flow the tier would drop. The collector opens the netns of every container
it sees at once (/proc/<pid>/ns/net of its first pid) and keeps that handle: the
namespace outlives the container while the handle is open, so the final counts
are read after the container exits, and nothing the container sent is lost to
timing. Counts are exact; first/last seen are the collector's reading times
(one poll interval, POLL seconds, of precision). A container that starts and
exits between two /proc scans (20 ms) and fork events is not seen at all.
"""

from __future__ import annotations

import os
import time

POLL = 0.5
HOST_GRACE = 2.0
MISSES = 4  # a netns with no flow sets after this many reads is not an audited network tier: let go


class Netns:
    """One container's netns handle and what was read from it so far."""

    __slots__ = ("fd", "path", "seen", "misses")

    def __init__(self, fd: int) -> None:
        self.fd, self.path = fd, f"/proc/{os.getpid()}/fd/{fd}"
        self.seen: dict[tuple, int] = {}
        self.misses = 0  # reads that found no flow sets: a runtime shim may load them after runc init starts


class FlowWatch:
    """Netns handles per container, read every POLL seconds by a thread of its own (nft runs as a child
    process: the collector's main loop must keep draining fork events and the kernel log meanwhile)."""

    def __init__(self, proc: str = "/proc") -> None:
        import queue
        import threading

        self.proc = proc
        self.netns: dict[str, Netns | None] = {}  # container -> handle (None: host netns, let go, unreadable)
        self.live: set[str] = set()
        self.first: dict[str, float] = {}  # container -> when it was first seen in the host netns
        self.lock = threading.Lock()
        self.found: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tiergate-flows", daemon=True)
        self.thread.start()

    def saw(self, live: dict[str, int]) -> None:
        """The containers alive now, each with a live pid: hold the netns of each new one."""
        from tiergate.network.apply import NetworkApplyError, check_not_host

        with self.lock:
            self.live = set(live)
            new = [(cid, pid) for cid, pid in live.items() if cid not in self.netns]
            for cid in [c for c, ns in self.netns.items() if ns is None and c not in live]:
                del self.netns[cid]  # a long-running collector keeps only what is alive or still to read
        self.first = {c: t for c, t in self.first.items() if c in live}
        now = time.monotonic()
        for cid, pid in new:
            try:
                fd = os.open(f"{self.proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # gone already: a later pid of it may still come
            held = Netns(fd)
            ns: Netns | None = held
            try:
                check_not_host(held.path)
            except NetworkApplyError:
                os.close(fd)
                # the runtime's first process joins the cgroup before it joins the container's netns:
                # host netns for HOST_GRACE seconds means --network host (nothing of tiergate's there)
                if now - self.first.setdefault(cid, now) < HOST_GRACE:
                    continue
                ns = None
            with self.lock:
                self.netns[cid] = ns

    def records(self) -> list[dict]:
        """Flow records (deltas) read since the last call."""
        out = []
        while not self.found.empty():
            out.append(self.found.get())
        return out

    def close(self) -> list[dict]:
        """Stop the reader, read every held netns a last time, let them go; the last records."""
        self.stop.set()
        self.thread.join(30)
        with self.lock:
            self.live = set()
        self._poll()
        return self.records()

    def _run(self) -> None:
        while not self.stop.wait(POLL):
            self._poll()

    def _poll(self) -> None:
        """Read each held netns; one whose container is no longer alive is read once more and let go."""
        with self.lock:
            held = [(cid, ns, cid not in self.live) for cid, ns in self.netns.items() if ns is not None]
        for cid, ns, done in held:
            for rec in self._read(cid, ns):
                self.found.put(rec)
            if done or ns.misses >= MISSES:
                with self.lock:
                    self.netns[cid] = None
                os.close(ns.fd)

    def _read(self, cid: str, ns: Netns) -> list[dict]:
        from tiergate.network import flows
        from tiergate.network.apply import NetworkApplyError, list_table

        try:
            listing = list_table(ns.path)
        except NetworkApplyError:
            listing = {}  # no tiergate table (not a network tier)
        if not flows.has_sets(listing):
            ns.misses += 1
            return []
        ns.misses = 0
        rows = flows.parse(listing)
        out = []
        for r in rows:
            key = (r["peer"], r["proto"], r["port"])
            delta = r["packets"] - ns.seen.get(key, 0)
            if delta > 0:
                ns.seen[key] = r["packets"]
                out.append({"kind": "flow", "container": cid, "peer": r["peer"], "proto": r["proto"],
                            "port": r["port"], "count": delta})
        return out
