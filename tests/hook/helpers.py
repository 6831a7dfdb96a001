"""Shared helpers for tests/hook: the shipped policy, spec inputs, fake storage, the never-weaker check.

The never-weaker check is written independently of the modifiers (it does not
import them) so that a bug in a modifier cannot hide itself in the check.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import functools
import json
import os
import posixpath
import subprocess
import sys
from pathlib import Path

from testdata import SAMPLES, SPEC_VECTORS

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = REPO / "tiergate" / "configs" / "policy.toml"
PYTHON = str(Path(sys.executable))

CORE_TIERS = ("privileged", "baseline", "restricted", "isolated")  # the four the foundation issue names
NON_PRIVILEGED = ("baseline", "restricted", "isolated")

# (type, major, minor) that runc and the engines always allow; None = any minor.
STANDARD_DEVICES = {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0),
                    ("c", 5, 1), ("c", 5, 2), ("c", 136, None), ("c", 10, 200)}
REQUIRED_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")


@functools.lru_cache(maxsize=1)
def _shipped() -> str:
    from tiergate.policy.compile import compile_file

    return json.dumps(compile_file(SHIPPED_POLICY))


def shipped_policy() -> dict:
    """The compiled shipped policy (a fresh copy each call; compiled once per process)."""
    return json.loads(_shipped())


TIERS = tuple(shipped_policy()["tiers"])  # every shipped tier, the core four and any workload tiers


def load_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_bytes())


def linux_inputs() -> list[Path]:
    """Every engine sample config and good runtime-spec vector that is a Linux spec."""
    files = sorted(p for p in SAMPLES.glob("*.json") if "state" not in p.name)
    files += sorted((SPEC_VECTORS / "good").glob("*.json"))
    return [p for p in files if isinstance(load_json(p).get("linux"), dict)]


def runc_default() -> dict:
    return load_json(SAMPLES / "runc-1.1-spec-default.json")


def podman_precreate() -> dict:
    return load_json(SAMPLES / "podman-4.3-precreate-stdin.json")


def docker_bundle() -> dict:
    return load_json(SAMPLES / "docker-20.10-bundle-config.json")


def all_caps() -> list[str]:
    from tiergate.core.capabilities import NAMES

    return list(NAMES)


def privileged_like(spec: dict | None = None) -> dict:
    """What `docker run --privileged` produces: every capability, no seccomp, host devices, allow-all rule, no masks."""
    spec = copy.deepcopy(spec or runc_default())
    caps = all_caps()
    spec["process"]["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    spec["process"].pop("noNewPrivileges", None)
    linux = spec["linux"]
    linux.pop("seccomp", None)
    linux["devices"] = [
        {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "fileMode": 0o660, "uid": 0, "gid": 6},
        {"path": "/dev/mem", "type": "c", "major": 1, "minor": 1, "fileMode": 0o640, "uid": 0, "gid": 15},
        {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11},
    ]
    linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    linux["maskedPaths"] = []
    linux["readonlyPaths"] = []
    return spec


# --- the never-weaker invariant ------------------------------------------------------


def _norm(path: str) -> str:
    # Linux treats any run of slashes as one, including a leading "//".
    out = posixpath.normpath("/" + path.lstrip("/")) if path.startswith("/") else posixpath.normpath(path)
    return out


ENGINE_OWNED_SHAPES = (
    "*/overlay-containers/*/userdata/*",
    "/var/lib/docker/containers/*/hostname",
    "/var/lib/docker/containers/*/hosts",
    "/var/lib/docker/containers/*/resolv.conf",
    "/var/lib/docker/containers/*/mounts/shm",
    "/var/lib/docker/volumes/*/_data",
    "/var/lib/docker/volumes/*/_data/*",
    "/var/lib/containers/storage/volumes/*/_data",
    "/var/lib/containers/storage/volumes/*/_data/*",
)


def _engine_owned(src: str) -> bool:
    return ".." not in src.split("/") and any(fnmatch.fnmatchcase(src, p) for p in ENGINE_OWNED_SHAPES)


def sensitive_hit(src: str, policy: dict) -> str | None:
    """The sensitive path `src` is, is under, or is a parent of (-v /var exposes /var/lib/docker)."""
    norm = _norm(src)
    if posixpath.basename(norm) in policy["sensitive"]["sockets"]:
        return "socket"
    for s in policy["sensitive"]["paths"]:
        if norm == s or (s != "/" and norm.startswith(s + "/")) or (norm != "/" and s.startswith(norm + "/")):
            return s
    return None


_NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt", "cgroup": "cgroup",
             "user": "user", "time": "time"}


def _ns_ident(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def host_namespace(kind: str, path: str) -> bool:
    """Would joining `path` share the host's namespace? Unreadable counts as yes (fail closed);
    the host's identity is init's, kthreadd's or this test's own (it runs in the host's)."""
    ident = _ns_ident(path)
    host = {_ns_ident(f"/proc/{who}/ns/{_NS_FILES.get(kind, kind)}") for who in ("1", "2", "self")}
    return ident is None or ident in host


def is_bind(m: dict) -> bool:
    opts = m.get("options") or []
    return m.get("type") == "bind" or "bind" in opts or "rbind" in opts


def weaknesses(out: dict, tier: dict, policy: dict, facts: dict | None = None) -> list[str]:
    """Every way `out` is weaker than `tier` allows; empty means the invariant holds.

    facts: what harden() was given about the host, when it was gathered from this host: then
    mount sources count as they resolve here too, and the AppArmor profile the facts say was
    loaded must be the spec's."""
    bad: list[str] = []
    if tier["passthrough"]:
        return bad
    proc = out.get("process")
    if isinstance(proc, dict):
        allowed = set(tier["capabilities"])
        for name, caps in (proc.get("capabilities") or {}).items():
            extra = set(caps) - allowed
            if extra:
                bad.append(f"capabilities.{name} has {sorted(extra)}")
        if tier["no_new_privileges"] and proc.get("noNewPrivileges") is not True:
            bad.append("noNewPrivileges is not true")
        loaded = (facts or {}).get("apparmor")
        if tier["apparmor"] != "off" and loaded and proc.get("apparmorProfile") != tier["apparmor_profile"]:
            bad.append(f"AppArmor profile {proc.get('apparmorProfile')!r}, not the tier's (loaded here)")
        if tier["apparmor"] == "require" and not loaded:
            bad.append("runs without the AppArmor profile its tier requires (none loaded)")
    linux = out.get("linux") or {}
    if tier["seccomp"] is not None and seccomp_allows_more(linux.get("seccomp"), tier["seccomp"]):
        bad.append("seccomp allows what the tier's profile denies")
    kinds = {ns.get("type"): ns for ns in linux.get("namespaces") or []}
    for kind in REQUIRED_NAMESPACES:
        if kind not in tier["host_namespaces"] and kind not in kinds:
            bad.append(f"{kind} namespace missing (host's shared)")
    for ns in linux.get("namespaces") or []:
        path = ns.get("path")
        if path and ns.get("type") not in tier["host_namespaces"] and host_namespace(ns.get("type"), path):
            bad.append(f"joins the host's {ns.get('type')} namespace at {path}")
    for dev in linux.get("devices") or []:
        if dev.get("path") not in tier["devices"]:
            bad.append(f"host device {dev.get('path')}")
    rules = (linux.get("resources") or {}).get("devices") or []
    if rules and rules[0].get("allow") is not False:
        bad.append("device cgroup does not start with deny")
    tier_devs = {(d.get("type"), d.get("major"), d.get("minor")) for d in linux.get("devices") or []}
    for r in rules:
        if r.get("allow") is not True:
            continue
        access = r.get("access", "rwm")
        if "r" not in access and "w" not in access:
            continue
        key = (r.get("type"), r.get("major"), r.get("minor"))
        if key not in STANDARD_DEVICES | tier_devs and (key[0], key[1], None) not in STANDARD_DEVICES:
            bad.append(f"device cgroup allows {key} {access}")
    if not tier["sensitive_mounts"]:
        for m in out.get("mounts") or []:
            src, dest = m.get("source") or "", m.get("destination") or ""
            if posixpath.basename(_norm(dest or "/")) in policy["sensitive"]["sockets"]:
                bad.append(f"engine socket at {dest}")
            if is_bind(m) and not _engine_owned(src) and sensitive_hit(src, policy):
                bad.append(f"sensitive bind mount {src} -> {dest}")
            real = os.path.realpath(src) if facts and is_bind(m) and src.startswith("/") else None
            if real and not _engine_owned(real) and sensitive_hit(real, policy):
                bad.append(f"sensitive bind mount {src} (here {real}) -> {dest}")
    if tier["writable_mounts"] is not None:  # every other mount read-only (the kernel's own filesystems aside)
        writable = set(tier["writable_mounts"]) | set(tier["tmpfs"])
        for m in out.get("mounts") or []:
            if (m.get("destination") not in writable and m.get("type") not in ("proc", "sysfs", "devpts", "cgroup", "cgroup2")
                    and "ro" not in (m.get("options") or [])):
                bad.append(f"writable mount at {m.get('destination')} (writable_mounts: {sorted(writable)})")
    for key, tkey in (("maskedPaths", "masked_paths"), ("readonlyPaths", "readonly_paths")):
        missing = set(tier[tkey]) - set(linux.get(key) or [])
        if missing:
            bad.append(f"{key} lacks {sorted(missing)}")
    for name in linux.get("sysctl") or {}:
        if not any(fnmatch.fnmatchcase(name, p) for p in tier["sysctls"]):
            bad.append(f"sysctl {name}")
    if tier["pids_limit"]:
        limit = ((linux.get("resources") or {}).get("pids") or {}).get("limit")
        if not isinstance(limit, int) or limit <= 0 or limit > tier["pids_limit"]:
            bad.append(f"pids limit {limit!r}")
    if tier["readonly_rootfs"] and (out.get("root") or {}).get("readonly") is not True:
        bad.append("rootfs writable")
    return bad


# --- a model of seccomp's verdict (rules of one syscall assumed disjoint, a deny wins) ---------

_ALLOWING = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")


def _cond_holds(a: dict, args: list[int]) -> bool:
    x, v, v2, op = args[a["index"]], a.get("value", 0), a.get("valueTwo", 0), a["op"]
    return {"SCMP_CMP_EQ": x == v, "SCMP_CMP_NE": x != v, "SCMP_CMP_LT": x < v, "SCMP_CMP_LE": x <= v,
            "SCMP_CMP_GT": x > v, "SCMP_CMP_GE": x >= v, "SCMP_CMP_MASKED_EQ": (x & v) == v2}[op]


_BY_NAME: dict[int, tuple[dict, dict]] = {}


def seccomp_verdict(profile: dict, name: str, args: list[int]) -> str:
    """"allow" or "deny" for syscall `name` with `args` under an OCI seccomp profile."""
    memo = _BY_NAME.get(id(profile))
    if memo is None or memo[0] is not profile:
        index: dict = {}
        for r in profile.get("syscalls") or []:
            for n in r["names"]:
                index.setdefault(n, []).append(r)
        memo = _BY_NAME[id(profile)] = (profile, index)
    hits = [r["action"] for r in memo[1].get(name, ()) if all(_cond_holds(a, args) for a in r.get("args") or [])]
    if hits:
        return "allow" if all(h in _ALLOWING for h in hits) else "deny"
    return "allow" if profile.get("defaultAction") in _ALLOWING else "deny"


def seccomp_samples(*profiles: dict) -> dict[int, list[int]]:
    """Per argument index, the values the profiles compare against, and their neighbours."""
    out: dict[int, set] = {i: {0, 1} for i in range(6)}
    for p in profiles:
        for rule in p.get("syscalls") or []:
            for a in rule.get("args") or []:
                v, v2 = a.get("value", 0), a.get("valueTwo", 0)
                out[a["index"]] |= {v, v2, v + 1, max(v - 1, 0), v | v2}
    return {i: sorted(vals) for i, vals in out.items()}


def seccomp_arg_vectors(vals: dict[int, list[int]]):
    yield [0] * 6
    for i, vs in vals.items():
        for v in vs:
            args = [0] * 6
            args[i] = v
            yield args
    for a0 in vals[0]:
        for a2 in vals[2]:
            yield [a0, 0, a2, 0, 0, 0]


def seccomp_allows_more(result: dict | None, tier: dict) -> bool:
    """True if `result` allows some call (named by either profile, sampled args) that `tier` denies."""
    if not isinstance(result, dict):
        return True
    names = {n for p in (tier, result) for r in p.get("syscalls") or [] for n in r["names"]} | {"open_tree"}
    vals = seccomp_samples(tier, result)
    return any(seccomp_verdict(result, n, a) == "allow" and seccomp_verdict(tier, n, a) != "allow"
               for n in names for a in seccomp_arg_vectors(vals))


def without_annotations(spec: dict) -> dict:
    out = copy.deepcopy(spec)
    out.pop("annotations", None)
    return out


# --- fake containers-storage -----------------------------------------------------------

LAYER = "2d172a4930947b80b550294a1567ec2c9a60867f4f4b89ecfabc06c04b6e5ed7"
IMAGE = "5f1c4a2bd6e8a1b4c0d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1"
CONTAINER = "ab7bff011bf0d14e22f159cffc3cdeb11185187e73806a16d1dab5a319998818"


def blob_name(image_id: str) -> str:
    return "=" + base64.b64encode(f"sha256:{image_id}".encode()).decode()


def make_storage(graph: Path, labels: dict | None = None, names=("docker.io/library/nginx:1.27",),
                 exposed: dict | None = None, image_id: str = IMAGE, layer: str = LAYER,
                 driver: str = "overlay") -> str:
    """A minimal containers-storage tree under `graph`; returns the rootfs path a precreate spec names."""
    (graph / f"{driver}-containers").mkdir(parents=True, exist_ok=True)
    (graph / f"{driver}-images" / image_id).mkdir(parents=True, exist_ok=True)
    (graph / driver / layer / "merged").mkdir(parents=True, exist_ok=True)
    (graph / f"{driver}-containers" / "containers.json").write_text(json.dumps(
        [{"id": "f" * 64, "layer": "e" * 64, "image": "d" * 64},
         {"id": CONTAINER, "names": ["web"], "image": image_id, "layer": layer}]))
    (graph / f"{driver}-images" / "images.json").write_text(json.dumps(
        [{"id": image_id, "digest": f"sha256:{'9' * 64}", "names": list(names), "layer": "c" * 64}]))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Labels": labels or {}, "ExposedPorts": exposed or {}, "Env": ["PATH=/usr/bin"]}}
    (graph / f"{driver}-images" / image_id / blob_name(image_id)).write_text(json.dumps(config))
    return str(graph / driver / layer / "merged")


# --- subprocesses ------------------------------------------------------------------------


def run(module: str, args: list[str], stdin: bytes = b"", env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", module, *args], input=stdin, capture_output=True,
                          env=full_env, timeout=timeout, check=False)


def assert_no_traceback(stderr: bytes) -> None:
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


# -- containerd's records: a bbolt file and a content store, written from the format --------------

class BoltWriter:
    """A bbolt file from nested dicts (bytes -> bytes value | dict bucket), written from the
    format (page header, meta with FNV-1a checksum, branch/leaf elements, inline buckets), not
    from the reader under test. Buckets of more than `fanout` keys get a branch page."""

    def __init__(self, page_size: int = 4096, fanout: int = 4):
        self.ps, self.fanout = page_size, fanout
        self.pages: dict[int, bytes] = {}
        self.next = 3  # 0, 1: meta; 2: freelist

    @staticmethod
    def _page(pgid: int, flags: int, count: int, body: bytes, overflow: int = 0) -> bytes:
        import struct
        return struct.pack("<QHHI", pgid, flags, count, overflow) + body

    def _leaf_body(self, items: list) -> bytes:
        import struct
        elems, data = b"", b""
        n = len(items)
        for i, (key, value, flags) in enumerate(items):
            pos = (n - i) * 16 + len(data)  # from this element to its key
            elems += struct.pack("<IIII", flags, pos, len(key), len(value))
            data += key + value
        return elems + data

    def _store(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next
        raw = self._page(pgid, flags, count, body)
        overflow = max(0, (len(raw) - 1) // self.ps)
        self.pages[pgid] = self._page(pgid, flags, count, body, overflow)
        self.next += overflow + 1
        return pgid

    def bucket(self, tree: dict, inline: bool = False) -> bytes:
        """A bucket's value in its parent: header (root pgid, sequence) [+ inline page]."""
        import struct
        items = []
        for key in sorted(tree):
            value = tree[key]
            if isinstance(value, dict):
                items.append((key, self.bucket(value, inline=len(value) <= 1), 0x01))
            else:
                items.append((key, value, 0x00))
        if inline:
            return struct.pack("<QQ", 0, 0) + self._page(0, 0x02, len(items), self._leaf_body(items))
        chunks = [items[i:i + self.fanout] for i in range(0, len(items), self.fanout)] or [[]]
        leaves = [(chunk[0][0] if chunk else b"", self._store(0x02, len(chunk), self._leaf_body(chunk))) for chunk in chunks]
        if len(leaves) == 1:
            return struct.pack("<QQ", leaves[0][1], 0)
        elems, data = b"", b""
        for i, (key, pgid) in enumerate(leaves):
            elems += struct.pack("<IIQ", (len(leaves) - i) * 16 + len(data), len(key), pgid)
            data += key
        return struct.pack("<QQ", self._store(0x01, len(leaves), elems + data), 0)

    def meta(self, pgid: int, root: int, txid: int, good: bool = True) -> bytes:
        import struct
        fields = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, self.ps, 0, root, 0, 2, self.next, txid)
        h = 0xCBF29CE484222325
        for b in fields:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return self._page(pgid, 0x04, 0, fields + struct.pack("<Q", h if good else h ^ 1))

    def write(self, path, tree: dict, txid: int = 7) -> None:
        import struct
        root = struct.unpack_from("<Q", self.bucket(tree))[0]
        out = bytearray(self.next * self.ps)
        for pgid, raw in [(0, self.meta(0, root, txid)), (1, self.meta(1, root, txid - 1)),
                          (2, self._page(2, 0x10, 0, b"")), *self.pages.items()]:
            out[pgid * self.ps:pgid * self.ps + len(raw)] = raw
        Path(path).write_bytes(bytes(out))


def containerd_any(type_url: str, doc: dict) -> bytes:
    """A protobuf google.protobuf.Any holding JSON, as containerd stores its CRI records."""
    def field(num: int, data: bytes) -> bytes:
        size, out = len(data), b""
        while True:
            byte = size & 0x7F
            size >>= 7
            out += bytes([byte | (0x80 if size else 0)])
            if not size:
                break
        return bytes([num << 3 | 2]) + out + data
    return field(1, type_url.encode()) + field(2, json.dumps(doc).encode())
