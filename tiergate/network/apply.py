"""Load a built nft JSON document inside a container's network namespace (HOT PATH: stdlib only).

Never the host's namespace: the target is compared (st_dev, st_ino) with
/proc/1/ns/net and with our own namespace, and refused if equal.

Loader: libnftables (through `_ctypes`) while this thread is in the namespace
(network/netns.py): no nft process, no subprocess import, no helper process; a
transaction that creates the table where there is none (see _load: the socket's
close then waits for nothing). read_counters (the
CLI, off the start path) runs `/usr/bin/nsenter --net=<path> /usr/sbin/nft`;
bench/bench.py compares the two loaders.
"""

from __future__ import annotations

import os

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

NSENTER = "/usr/bin/nsenter"
NFT = "/usr/sbin/nft"
HOST_NETNS = "/proc/1/ns/net"
SELF_NETNS = "/proc/self/ns/net"
TIMEOUT = 10.0
CLONE_NEWNET = 0x40000000


class NetworkApplyError(Exception):
    """Loading or reading the container's ruleset failed (one line)."""


def _one_line(text: str, limit: int = 300) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return "no error output"


def netns_path(netns: str | int) -> str:
    """Path of the target namespace: a path as given, or /proc/<pid>/ns/net for a pid."""
    if isinstance(netns, bool):
        raise NetworkApplyError(f"bad network namespace {netns!r}")
    if isinstance(netns, int) or (isinstance(netns, str) and netns.isdigit()):
        pid = int(netns)
        if pid <= 1:
            raise NetworkApplyError(f"refusing pid {pid}: that is the host's network namespace")
        return f"/proc/{pid}/ns/net"
    if not isinstance(netns, str) or not netns.startswith("/") or "\0" in netns:
        raise NetworkApplyError(f"network namespace must be an absolute path or a pid, got {netns!r}")
    return netns


def _host_refs() -> list[str]:
    """Namespaces that count as the host's: pid 1's, kthreadd's (always init_net), our own.

    /proc/1/ns/net is unreadable where pid 1 holds capabilities we lack (EACCES
    from the ptrace access check); kthreadd's link stays readable there.
    """
    refs = [HOST_NETNS]
    try:
        with open("/proc/2/comm", "rb") as f:
            if f.read().strip() == b"kthreadd":
                refs.append("/proc/2/ns/net")
    except OSError:
        pass
    refs.append(SELF_NETNS)
    return refs


def check_not_host(path: str) -> os.stat_result:
    """Stat the target namespace; refuse the host's (pid 1's / kthreadd's) and our own."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NetworkApplyError(f"network namespace {path}: {exc.strerror}") from None
    checked = 0
    for ref in _host_refs():
        try:
            rs = os.stat(ref)
        except OSError:
            continue
        checked += 1
        if (st.st_dev, st.st_ino) == (rs.st_dev, rs.st_ino):
            raise NetworkApplyError(f"refusing to load rules: {path} is the host's network namespace ({ref})")
    if not checked:
        raise NetworkApplyError("cannot stat any reference namespace to rule out the host's")
    return st


def _run_in_netns(path: str, args: list[str], stdin: str | None, timeout: float) -> str:
    import subprocess

    try:
        proc = subprocess.run(
            [NSENTER, f"--net={path}", *args], input=stdin, capture_output=True, text=True,
            timeout=timeout, env={}, close_fds=True, cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise NetworkApplyError(f"nft in {path} timed out after {timeout:g}s") from None
    except OSError as exc:
        raise NetworkApplyError(f"cannot run {NSENTER}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise NetworkApplyError(f"nft in {path} failed (rc {proc.returncode}): {_one_line(proc.stderr)}")
    return proc.stdout


def apply(doc: dict, netns: str | int, timeout: float = TIMEOUT) -> str:
    """Load `doc` (from ruleset.build) in one nft transaction inside `netns` (path or pid): "created"
    (the namespace had no table inet tiergate) or "replaced".

    `timeout` is accepted for callers' sake and unused: a netlink transaction in-process does not hang."""
    return _load(doc, netns)


def list_table(netns: str | int, timeout: float = TIMEOUT) -> dict:
    """`nft -j list table inet tiergate` in a container's netns (never the host's), parsed."""
    path = netns_path(netns)
    check_not_host(path)
    out = _run_in_netns(path, [NFT, "-j", "list", "table", "inet", "tiergate"], None, timeout)
    try:
        listing = parse(out, "nft output")
    except OciError:
        raise NetworkApplyError("nft printed JSON that does not parse") from None
    if not isinstance(listing, dict):
        raise NetworkApplyError("nft printed JSON that does not parse")
    return listing


def read_counters(netns: str | int, timeout: float = TIMEOUT) -> list[dict]:
    """[{"chain", "name", "packets", "bytes"}] for every rule of `inet tiergate` that counts."""
    items = list_table(netns, timeout).get("nftables", [])
    rows = []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                c = expr["counter"]
                rows.append({"chain": rule.get("chain", ""), "name": rule.get("comment", f"handle {rule.get('handle')}"),
                             "packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0))})
                break
    return rows


# -- loading: libnftables in-process, in a thread that joined the namespace ------------------

LIBNFTABLES = "libnftables.so.1"
NFT_CTX_OUTPUT_JSON = 1 << 4
_nft = None


def libnftables() -> dict:
    """libnftables' functions, loaded once per process; the warm helper loads them before it forks
    (engines/warm.py: ~2 ms of dlopen a network start no longer pays). OSError if it is absent."""
    global _nft
    if _nft is None:
        from tiergate.network.netns import c_function

        f = {name: c_function(LIBNFTABLES, "nft_" + name, res, args) for name, res, args in (
            ("ctx_new", "void*", ("int",)), ("ctx_free", "int", ("void*",)),
            ("ctx_output_set_flags", "int", ("void*", "int")), ("ctx_buffer_error", "int", ("void*",)),
            ("ctx_buffer_output", "int", ("void*",)), ("ctx_get_error_buffer", "char*", ("void*",)),
            ("run_cmd_from_buffer", "int", ("void*", "char*")))}
        _nft = f
    return _nft


def _load(doc: dict, netns: str | int) -> str:
    """Load `doc` with libnftables from inside the namespace: one transaction, no process.

    First as a transaction that only creates the table (ruleset.creating): a fresh namespace,
    the usual case, takes it, and its commit leaves the kernel nothing to free. A replacing
    commit (the add, delete, add of ruleset.build) queues the replaced objects for freeing
    after an RCU grace period, and the last close of the socket waits for that (5-20 ms
    here). Where the table exists already the create fails as a whole, the old rules still
    in force, and `doc` replaces it. "created" or "replaced"."""
    from tiergate.network.metadata import NFPROTO_INET, table_exists
    from tiergate.network.netns import NetnsError, run_in
    from tiergate.network.ruleset import TABLE, creating

    path = netns_path(netns)
    check_not_host(path)
    fresh = creating(doc)
    try:
        nft = libnftables()
    except OSError as exc:
        raise NetworkApplyError(f"cannot load {LIBNFTABLES}: {exc}") from None

    def work() -> tuple[str, bytes]:
        tries = [("replaced", doc)]
        if fresh is not None and not table_exists(NFPROTO_INET, TABLE):
            tries.insert(0, ("created", fresh))  # the replace only if the table was made in between
        ctx = nft["ctx_new"](0)
        if not ctx:
            return "", b"nft_ctx_new failed"
        try:
            nft["ctx_output_set_flags"](ctx, NFT_CTX_OUTPUT_JSON)
            nft["ctx_buffer_error"](ctx)
            nft["ctx_buffer_output"](ctx)
            err = b""
            for how, payload in tries:
                if nft["run_cmd_from_buffer"](ctx, dumps(payload)) == 0:
                    return how, b""
                err = nft["ctx_get_error_buffer"](ctx) or b"libnftables failed"
            return "", err
        finally:
            nft["ctx_free"](ctx)

    try:
        how, err = run_in(path, work)
    except NetnsError as exc:
        raise NetworkApplyError(f"nft in {path}: {exc}") from None
    if err:
        raise NetworkApplyError(f"nft in {path} failed: {_one_line(err.decode(errors='replace'))}")
    return how
