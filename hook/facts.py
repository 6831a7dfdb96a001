"""Host facts the pure engine needs, gathered at the edge: namespace identities, real mount sources, AppArmor."""

from __future__ import annotations

import os

_NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
             "cgroup": "cgroup", "user": "user", "time": "time"}


def _ident(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def gather(spec: dict, tier: dict, notes: list | None = None) -> dict:
    """Stat what the spec points at; load the tier's AppArmor profile when the host has AppArmor."""
    facts: dict = {"notes": list(notes or ())}
    if tier.get("passthrough"):
        return facts
    linux = spec.get("linux") if isinstance(spec.get("linux"), dict) else {}
    nss = linux.get("namespaces") if isinstance(linux.get("namespaces"), list) else []
    paths = [ns["path"] for ns in nss if isinstance(ns, dict) and isinstance(ns.get("path"), str)]
    if paths:
        # The host's identity of each namespace: init's when readable (it is not always,
        # even as root), kthreadd's (pid 2 always lives in the host's), and this hook's own.
        facts["host_ns"] = {kind: [i for i in (_ident(f"/proc/{who}/ns/{f}") for who in ("1", "2", "self")) if i]
                            for kind, f in _NS_FILES.items()}
        facts["ns_paths"] = {p: _ident(p) for p in paths}
    mounts = spec.get("mounts") if isinstance(spec.get("mounts"), list) else []
    facts["realpaths"] = {
        m["source"]: os.path.realpath(m["source"])
        for m in mounts
        if isinstance(m, dict) and isinstance(m.get("source"), str) and m["source"].startswith("/")
    }
    if tier.get("pids_limit"):
        facts["cgroup_limits"] = cgroup_limits()
    if tier.get("apparmor", "off") != "off":
        facts["apparmor"] = None  # the apparmor modifier notes ("prefer") or refuses ("require")
        if not _apparmor_enabled():
            return facts
        from . import apparmor

        try:
            facts["apparmor"], _ = apparmor.decide(tier, True)  # loads the profile (cached by content)
        except apparmor.AppArmorError:
            pass
    return facts


def cgroup_limits(uid_map: str = "/proc/self/uid_map", cgroup: str = "/proc/self/cgroup",
                  root: str = "/sys/fs/cgroup") -> bool:
    """Can the runtime apply cgroup limits? Always outside a user namespace; rootless, only when delegated."""
    try:
        with open(uid_map) as fh:
            if fh.read().split() == ["0", "0", "4294967295"]:
                return True
    except OSError:
        return False
    return cgroup_delegated(cgroup, root)


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


def fresh_netns(spec: dict) -> bool:
    """A network entry without a path: the runtime makes a new namespace holding only loopback."""
    linux = spec.get("linux") if isinstance(spec.get("linux"), dict) else {}
    return any(isinstance(ns, dict) and ns.get("type") == "network" and not ns.get("path")
               for ns in linux.get("namespaces") or [])


def empty_netns(spec: dict) -> bool:
    """The namespace will stay loopback-only: fresh, and no hook that could move an interface in
    (CNI as an OCI hook, docker's libnetwork-setkey). Nothing for a policy to filter then."""
    hooks = spec.get("hooks") if isinstance(spec.get("hooks"), dict) else {}
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
    linux = spec.get("linux") if isinstance(spec.get("linux"), dict) else {}
    for ns in linux.get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return ns.get("path") if isinstance(ns.get("path"), str) and ns.get("path") else None
    return None


def resolv_conf_nameservers(spec: dict) -> list[str]:
    """Nameservers from the file the engine bind-mounts at /etc/resolv.conf."""
    from .network.metadata import nameservers

    for m in spec.get("mounts") or []:
        if isinstance(m, dict) and m.get("destination") == "/etc/resolv.conf" and isinstance(m.get("source"), str):
            try:
                with open(m["source"], "rb") as fh:
                    return nameservers(fh.read(65536).decode("utf-8", "replace"))
            except OSError:
                return []
    return []
