"""Host facts the pure engine needs, gathered at the edge: namespace identities, real mount sources, AppArmor."""

from __future__ import annotations

import os

from tiergate.core.names import NAMESPACE_FILES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from tiergate.core.contracts import Facts, MountFact, Tier


def _ident(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def gather(spec: dict, tier: Tier, notes: list | None = None, sockets: tuple = ()) -> Facts:
    """Stat what the spec points at; load the tier's AppArmor profile when the host has AppArmor."""
    facts: Facts = {"notes": list(notes or ())}
    if tier.get("passthrough"):
        return facts
    linux = spec["linux"] if isinstance(spec.get("linux"), dict) else {}
    nss = linux["namespaces"] if isinstance(linux.get("namespaces"), list) else []
    paths = [ns["path"] for ns in nss if isinstance(ns, dict) and isinstance(ns.get("path"), str)]
    if paths:
        # The host's identity of each namespace: init's when readable (it is not always,
        # even as root), kthreadd's (pid 2 always lives in the host's), and this hook's own.
        facts["host_ns"] = {kind: [i for i in (_ident(f"/proc/{who}/ns/{f}") for who in ("1", "2", "self")) if i]
                            for kind, f in NAMESPACE_FILES.items()}
        facts["ns_paths"] = {p: _ident(p) for p in paths}
    mounts = spec["mounts"] if isinstance(spec.get("mounts"), list) else []
    if not tier.get("sensitive_mounts") or tier.get("writable_binds") is not None:
        facts["mount_paths"] = mount_paths(mounts, tuple(sockets))
    wanted = tier.get("devices") or ()
    if wanted and linux.get("devices"):
        facts["devices"] = host_devices(wanted)
    if tier.get("pids_limit"):
        facts["cgroup_limits"] = cgroup_limits()
    if tier.get("apparmor", "off") != "off":
        facts["apparmor"] = None  # the apparmor modifier notes ("prefer") or refuses ("require")
        if not _apparmor_enabled():
            return facts
        from tiergate.host import apparmor

        try:
            facts["apparmor"], _ = apparmor.decide(tier, True)  # loads the profile (cached by content)
        except apparmor.AppArmorError:
            pass
    return facts


def cgroup_limits(uid_map: str = "/proc/self/uid_map", cgroup: str = "/proc/self/cgroup",
                  root: str = "/sys/fs/cgroup") -> bool:
    """Can the runtime apply cgroup limits? Always outside a user namespace; rootless, only when delegated."""
    identity = host_uids(uid_map)
    return identity is True or (identity is False and cgroup_delegated(cgroup, root))


def host_uids(uid_map: str = "/proc/self/uid_map") -> bool | None:
    """True outside a user namespace (identity map), False inside one, None if unreadable."""
    try:
        with open(uid_map) as fh:
            return fh.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return None


def unmapped_uid() -> int | None:
    """Inside a user namespace (a rootless engine's hook), the uid that files of unmapped owners show,
    host root's among them; None outside one."""
    if host_uids() is not False:
        return None
    overflow = _read("/proc/sys/kernel/overflowuid").strip()
    return int(overflow) if overflow.isdigit() else 65534


def cgroup_delegated(cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> bool:
    """A delegated cgroup v2: pure unified, `pids` offered in our own cgroup, which we may write."""
    try:
        with open(cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return False
    if len(lines) != 1 or not lines[0].startswith("0::"):
        return False  # v1 controllers (legacy or hybrid): never delegated to a user
    here = os.path.join(root, lines[0][3:].lstrip("/"))
    try:
        with open(os.path.join(here, "cgroup.controllers")) as fh:
            return "pids" in fh.read().split() and os.access(here, os.W_OK)
    except OSError:
        return False


# --- mounts: what a host path really is ---------------------------------------------------

# Kernel filesystems whose files are host paths wherever they are mounted (mountinfo fstype).
_FS_HOST_PATH = {"proc": "/proc", "sysfs": "/sys", "cgroup": "/sys/fs/cgroup", "cgroup2": "/sys/fs/cgroup"}


def mount_paths(mounts: list, sockets) -> dict[str, MountFact]:
    """For each host path a mount exposes: {"real", "aliases", "mutable", "socket"}.

    real: the path resolved as the kernel will; mutable: why a user other than root (or this
    engine's own user) could swap a component before the runtime mounts it; aliases: the same
    files at other host paths (mountinfo: a volume bind-mounted from `/` is `/`); socket: an
    engine socket under it. The last two cost a read of /proc, so engine per-container files skip them.
    """
    from tiergate.core.modifiers.mounts import KERNEL_FS, engine_file, host_paths

    out: dict[str, MountFact] = {}
    table = _MountTable()
    for m in mounts:
        if not isinstance(m, dict):
            continue
        for path in host_paths(m):
            if path in out or not path.startswith("/"):
                continue
            real, mutable = resolve(path)
            fact: MountFact = {"real": real, "mutable": mutable}
            if not engine_file(real):
                fact["aliases"] = table.aliases(real, KERNEL_FS)
                fact["socket"] = table.socket_under(real, sockets)
            out[path] = fact
    return out


def resolve(path: str) -> tuple[str, str | None]:
    """(real path, None or why someone else could change it): every directory the kernel
    looks a name up in must be owned by root (or this user) and not writable by group or
    others, except a sticky one (/tmp) whose entry is so owned."""
    import stat

    trusted = {0, os.geteuid()}
    if (overflow := unmapped_uid()) is not None:  # rootless: host root (and any uid not mapped) shows as it
        trusted.add(overflow)
    todo = [p for p in reversed(path.split("/")) if p]
    cur, cur_st, links, why = "/", None, 0, None
    try:
        cur_st = os.stat("/")
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                cur = os.path.dirname(cur)
                cur_st = os.stat(cur)
                continue
            nxt = os.path.join(cur, name)
            try:
                st = os.lstat(nxt)
            except FileNotFoundError:  # whoever may create it in `cur` decides what it will be
                rest = "/".join([name, *reversed(todo)])
                return os.path.normpath(os.path.join(cur, rest)), why or _unsafe_dir(cur, cur_st, None, trusted)
            if why is None:
                why = _unsafe_dir(cur, cur_st, st, trusted)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    return os.path.realpath(path), f"{path} has too many symbolic links"
                target = os.readlink(nxt)
                todo.extend(p for p in reversed(target.split("/")) if p)
                if target.startswith("/"):
                    cur, cur_st = "/", os.stat("/")
                continue
            cur, cur_st = nxt, st
    except OSError as exc:
        return os.path.realpath(path), f"{path} cannot be checked ({exc.strerror})"
    return cur, why


def _unsafe_dir(d: str, d_st, entry_st, trusted: set) -> str | None:
    if d_st.st_uid not in trusted:
        return f"passes through {d}, owned by uid {d_st.st_uid}"
    if d_st.st_mode & 0o022 and not (d_st.st_mode & 0o1000 and entry_st is not None and entry_st.st_uid in trusted):
        return f"passes through {d}, writable by {'others' if d_st.st_mode & 0o002 else 'group'}"
    return None


class _MountTable:
    """/proc/self/mountinfo and the bound engine sockets of /proc/net/unix, read once, when first needed."""

    def __init__(self, mountinfo: str | None = None, unix: str | None = None) -> None:
        self._mountinfo, self._unix = mountinfo, unix  # given: tests
        self._mounts: list[tuple[str, str, str, str, str, str]] | None = None
        self._sockets: list[str] | None = None

    def mounts(self) -> list[tuple[str, str, str, str, str, str]]:
        """(mount point, root within its filesystem, dev, fstype, source, super options), in mount order."""
        if self._mounts is None:
            self._mounts = []
            text = self._mountinfo if self._mountinfo is not None else _read("/proc/self/mountinfo")
            for line in text.splitlines():
                left, _, right = line.partition(" - ")
                f, r = left.split(" "), right.split(" ")
                if len(f) >= 5 and len(r) >= 2:
                    self._mounts.append((_unescape(f[4]), _unescape(f[3]), f[2], r[0], _unescape(r[1]),
                                         _unescape(r[2]) if len(r) > 2 else ""))
        return self._mounts

    def aliases(self, real: str, kernel_fs: dict) -> list[str]:
        """Other host paths of the files at `real`: the same filesystem mounted elsewhere."""
        mounts = self.mounts()
        best = None
        for m in mounts:
            if _under(real, m[0]) and (best is None or len(m[0]) >= len(best[0])):
                best = m
        if best is None:
            return []
        rest = real[len(best[0]):] if best[0] != "/" else real
        inner = (best[1].rstrip("/") + "/" + rest.lstrip("/")) if rest.strip("/") else best[1]
        out = []
        host = _FS_HOST_PATH.get(best[3]) or kernel_fs.get(best[3])
        if host:
            out.append(host + ("" if inner == "/" else inner))
        if best[3] == "overlay":  # a volume made as an overlay: its lower and upper dirs are what it shows
            for opt in best[5].split(","):
                key, _, value = opt.partition("=")
                if key in ("lowerdir", "upperdir"):
                    out += [d.rstrip("/") + ("" if inner == "/" else inner) or "/" for d in value.split(":") if d]
        same = [m for m in mounts if m[2] == best[2] and m is not best]
        for m in same:
            if _under(inner, m[1]):
                out.append(m[0].rstrip("/") + "/" + inner[len(m[1]):].lstrip("/") if m[1] != "/" else
                           (m[0].rstrip("/") + inner if inner != "/" else m[0]))
        if not same and best[4].startswith("/dev/") and not best[2].startswith("0:") and best[0] != "/":
            from tiergate.core.modifiers.mounts import volume_data

            if volume_data(best[0]):
                out.append(best[4])  # a host disk mounted only as this volume
        return [p for p in dict.fromkeys(os.path.normpath(p) for p in out) if p != real]

    def socket_under(self, real: str, names) -> str | None:
        """An engine socket (by name) in the directory `real` or anywhere under it."""
        if not names or not os.path.isdir(real):
            return None
        for name in names:
            if os.path.exists(os.path.join(real, name)):
                return os.path.join(real, name)
        if self._sockets is None:
            text = self._unix if self._unix is not None else _read("/proc/net/unix")
            bound = set()  # one line per connection too: each path once
            for line in text.splitlines()[1:]:
                fields = line.split(None, 7)
                if len(fields) == 8 and fields[7].startswith("/") and os.path.basename(fields[7]) in names:
                    bound.add(fields[7])
            dirs = {d: os.path.realpath(d) for d in {os.path.dirname(p) for p in bound}}
            self._sockets = sorted(os.path.join(dirs[os.path.dirname(p)], os.path.basename(p)) for p in bound)
        prefix = real.rstrip("/") + "/"
        return next((s for s in self._sockets if s.startswith(prefix)), None)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def host_devices(paths) -> dict[str, list]:
    """The tier's allowed device paths as the host has them: [type, major, minor] (missing: absent)."""
    import stat

    out = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else None
        if kind:
            out[p] = [kind, os.major(st.st_rdev), os.minor(st.st_rdev)]
    return out


def own_paths(policy_file: str, cache_dir: str | None, log: str | None) -> list[str]:
    """tiergate's own state and code: a container that could write them could switch tiergate off."""
    import sys

    import tiergate

    from tiergate.oci.bundle import real_path
    from tiergate.policy.cache import DEFAULT_CACHE_DIR, SYSTEM_POLICY
    from tiergate.telemetry.record import log_path

    out = [os.path.dirname(SYSTEM_POLICY), os.path.dirname(policy_file),
           cache_dir or os.environ.get("TIERGATE_CACHE_DIR") or DEFAULT_CACHE_DIR, os.path.dirname(log_path(log)),
           os.path.dirname(tiergate.__file__)]
    if sys.argv and sys.argv[0]:
        out.append(os.path.dirname(os.path.abspath(sys.argv[0])))  # the launcher's bin dir
    out = [os.path.abspath(p) for p in out if p]
    return sorted({os.path.normpath(p) for p in out} | {real_path(p) for p in out})


def fresh_netns(spec: dict) -> bool:
    """A network entry without a path: the runtime makes a new namespace holding only loopback."""
    linux = spec["linux"] if isinstance(spec.get("linux"), dict) else {}
    return any(isinstance(ns, dict) and ns.get("type") == "network" and not ns.get("path")
               for ns in linux.get("namespaces") or [])


def empty_netns(spec: dict) -> bool:
    """The namespace will stay loopback-only: fresh, and no hook that could move an interface in
    (CNI as an OCI hook, docker's libnetwork-setkey). Nothing for a policy to filter then."""
    hooks = spec["hooks"] if isinstance(spec.get("hooks"), dict) else {}
    return fresh_netns(spec) and not any(hooks.get(s) for s in ("prestart", "createRuntime", "createContainer"))


def _apparmor_enabled() -> bool:
    """The kernel's own answer, read without importing the AppArmor module (most hosts: absent)."""
    try:
        with open("/sys/module/apparmor/parameters/enabled", "rb") as fh:
            return fh.read(1) == b"Y" and os.path.isdir("/sys/kernel/security/apparmor")
    except OSError:
        return False


def netns_path(spec: dict) -> str | None:
    """The network namespace the container will join, if it exists already (podman at precreate)."""
    linux = spec["linux"] if isinstance(spec.get("linux"), dict) else {}
    for ns in linux.get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return ns.get("path") if isinstance(ns.get("path"), str) and ns.get("path") else None
    return None


def resolv_conf_nameservers(spec: dict) -> list[str]:
    """Nameservers from the file the engine bind-mounts at /etc/resolv.conf."""
    from tiergate.network.metadata import nameservers

    for m in spec.get("mounts") or []:
        if isinstance(m, dict) and m.get("destination") == "/etc/resolv.conf" and isinstance(m.get("source"), str):
            try:
                with open(m["source"], "rb") as fh:
                    return nameservers(fh.read(65536).decode("utf-8", "replace"))
            except OSError:
                return []
    return []
