"""Image facts for a docker container, from docker's own container config (config.v2.json).

dockerd writes `<data-root>/containers/<id>/config.v2.json` before it asks the
runtime to create the container, and bind-mounts /etc/hostname (hosts,
resolv.conf) from that same directory: the spec's /etc/hostname source leads
to the data root, whatever `--data-root` is (never assume /var/lib/docker).

config.v2.json: Config.Labels (the image's labels merged with `docker run
--label`), Config.Image (the reference the user gave: `busybox`,
`localhost/x:1`, or an image id), Image (the image id), Config.ExposedPorts,
Driver. The image's own labels come from its config in
`<data-root>/image/<driver>/imagedb/content/sha256/<id>`; which names it was
pulled under from `<data-root>/image/<driver>/repositories.json`, where a pull
records `repo@sha256:<digest>` beside the tag and `docker tag`, `commit`,
`import` and `load` record tags only.

The directory must be docker's, not a look-alike a user bind-mounted at
/etc/hostname: its name is the container id runc was given, the file names
the same ID, and it is a regular root-owned file nobody else may write.
Standard library only.
"""

from __future__ import annotations

import os
import stat

from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import parse

from tiergate.core.decide import Image
from tiergate.sources.claims import docker_dir as container_dir, is_hex as _hex

MAX_CONFIG = 8 * 1024 * 1024
DEFAULT_DOMAIN = "docker.io"


def network_mode(spec: dict) -> str | None:
    """docker's NetworkMode for this container (hostconfig.json beside config.v2.json), or None."""
    found = container_dir(spec)
    if found is None:
        return None
    try:
        mode = _read_owned(os.path.join(found[0], "hostconfig.json")).get("NetworkMode")
    except (OSError, ValueError, UnicodeDecodeError, OciError):
        return None
    return mode if isinstance(mode, str) else None


def normalize_ref(ref: str) -> str:
    """A docker reference in full: `busybox` -> `docker.io/library/busybox:latest`.

    The first component is a registry when it has a `.` or `:` or is
    `localhost`; docker.io's official images live under `library/`. A tag
    `:latest` is added unless a tag or digest is given.
    """
    ref = ref.strip()
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in ("index.docker.io", "registry-1.docker.io"):
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = "library/" + path
    last = path.rsplit("/", 1)[-1]
    if not at and ":" not in last:
        path += ":latest"
    return f"{domain}/{path}" + (f"@{digest}" if at else "")


_READ: dict[tuple, dict] = {}  # one process (a hook or shim run) parses each record once


def _read_owned(path: str) -> dict:
    """The JSON object in `path`: a regular, root-owned file no one else may write; no final symlink.
    A file read before (same inode, size and mtime) is not parsed again: docker's records are read
    for the image, the name, the network mode and the published ports of one container."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise ValueError("not a root-owned file that only root may write")
        if st.st_size > MAX_CONFIG:
            raise ValueError(f"larger than {MAX_CONFIG} bytes")
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _READ:
            return _READ[key]
        with os.fdopen(os.dup(fd), "rb") as fh:
            doc = parse(fh.read(MAX_CONFIG + 1).decode("utf-8"), "docker container config")
    finally:
        os.close(fd)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    _READ[key] = doc
    return doc


def container_name(spec: dict) -> str:
    """The docker container's name (config.v2.json "Name", without its "/"), or "" (for the log only)."""
    found = container_dir(spec)
    if found is None:
        return ""
    try:
        name = _read_owned(os.path.join(found[0], "config.v2.json")).get("Name")
    except (OSError, ValueError, UnicodeDecodeError, OciError):
        return ""
    return name.lstrip("/")[:128] if isinstance(name, str) else ""


def image_for_spec(spec: dict, container_id: str | None = None) -> Image | None:
    """The image of a docker container; None when the spec is not docker's. Never raises."""
    found = container_dir(spec)
    if found is None:
        return None
    directory, dir_id = found
    if container_id and container_id != dir_id:
        return Image.unknown(f"the /etc/hostname mount comes from container {dir_id[:12]}, not {container_id[:12]}")
    path = os.path.join(directory, "config.v2.json")
    try:
        doc = _read_owned(path)
    except OSError as exc:
        return Image.unknown(f"cannot read docker's container config {path}: {exc.strerror}")
    except (ValueError, UnicodeDecodeError, OciError) as exc:
        return Image.unknown(f"docker's container config {path}: {str(exc)[:100]}")
    if doc.get("ID") != dir_id:
        return Image.unknown(f"docker's container config {path} names another container")
    config = doc["Config"] if isinstance(doc.get("Config"), dict) else {}
    labels = config["Labels"] if isinstance(config.get("Labels"), dict) else {}
    exposed = config["ExposedPorts"] if isinstance(config.get("ExposedPorts"), dict) else {}
    image_id = doc["Image"] if isinstance(doc.get("Image"), str) else ""
    asked = config["Image"] if isinstance(config.get("Image"), str) else ""
    refs = []
    if asked and not (_hex(asked.removeprefix("sha256:"), 12, 64) and image_id.removeprefix("sha256:").startswith(asked.removeprefix("sha256:"))):
        refs.append(normalize_ref(asked))
    store = os.path.join(os.path.dirname(os.path.dirname(directory)), "image", str(doc.get("Driver") or ""))
    own = image_labels(store, image_id)
    if isinstance(own, str):
        return Image.unknown(own)
    return Image(refs=refs, id=image_id, labels=own,
                 pulled=lambda: [r for r in refs if _pulled(r, pulled_repos(store, image_id))],
                 container_labels={k: v for k, v in labels.items() if isinstance(v, str)}, exposed=list(exposed))


def image_labels(store: str, image_id: str) -> dict | str:
    """The image's own labels from its config in docker's image store, or why they cannot be read."""
    digest = image_id.removeprefix("sha256:")
    if not _hex(digest, 64, 64) or not os.path.basename(store):
        return f"docker's container config names no image id or storage driver ({image_id[:20]!r})"
    path = os.path.join(store, "imagedb", "content", "sha256", digest)
    try:
        cfg = _read_owned(path).get("config")
    except OSError as exc:
        return f"cannot read docker's image record {path}: {exc.strerror}"
    except (ValueError, UnicodeDecodeError, OciError) as exc:
        return f"docker's image record {path}: {str(exc)[:100]}"
    labels = cfg["Labels"] if isinstance(cfg, dict) and isinstance(cfg.get("Labels"), dict) else {}
    return {k: v for k, v in labels.items() if isinstance(v, str)}


def pulled_repos(store: str, image_id: str) -> set[str]:
    """Repositories this image was pulled from: those with a `repo@sha256:` entry for its id in
    repositories.json. Read only when a trust rule that lifts the ceiling asks; unreadable: none."""
    want = "sha256:" + image_id.removeprefix("sha256:")
    try:
        repos = _read_owned(os.path.join(store, "repositories.json")).get("Repositories")
    except (OSError, ValueError, UnicodeDecodeError, OciError):
        return set()
    return {repo for repo, refs in (repos if isinstance(repos, dict) else {}).items()
            if isinstance(refs, dict) and any("@" in r and v == want for r, v in refs.items())}


def _pulled(ref: str, repos: set[str]) -> bool:
    """Was `ref` (normalized) pulled, i.e. does its repository carry a digest for this image?"""
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    repo = name.rsplit(":", 1)[0] if ":" in last else name
    return repo in repos or repo.removeprefix(DEFAULT_DOMAIN + "/").removeprefix("library/") in repos
