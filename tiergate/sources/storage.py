"""Image facts from containers-storage (podman, buildah, CRI-O), read without calling the engine.

Podman holds the container's lock while hooks run, so asking podman would
deadlock; its storage metadata is plain JSON on disk. The precreate spec's
root.path is `<graphroot>/overlay/<layer>/merged`: the graphroot comes from
it, which honours storage.conf, --root and rootless storage alike.

Names here are no identity: `podman tag`, `import`, `load` and `commit` record
a name together with a (locally made) manifest digest exactly as a pull does,
so no name in images.json proves a pull. An image from containers-storage
therefore earns a lifted ceiling only by a digest rule (its id or manifest
digest); name rules may still tighten it.
"""

from __future__ import annotations

import binascii
import os
import stat

from tiergate.oci.jsonio import parse

from tiergate.oci.errors import OciError

from tiergate.core.decide import Image
from tiergate.sources.claims import HEX as _HEX, storage_root as split_root

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the start path)
if TYPE_CHECKING:
    from mmap import mmap

MAX_METADATA = 256 * 1024 * 1024


def _open(path: str, what: str) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file at `path` (no symlink followed) and its stat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise OciError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise OciError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OciError(f"{what} {path} is not a regular file")
    return fd, st


def _read_bytes(path: str, what: str) -> bytes:
    fd, st = _open(path, what)
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(min(st.st_size, MAX_METADATA) + 1)  # sized: a 256 MB buffer costs ~0.1 ms
            if len(data) > st.st_size:  # it grew meanwhile
                data += fh.read(MAX_METADATA + 1 - len(data))
    except OSError as exc:
        raise OciError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_METADATA:
        raise OciError(f"{what} {path} is larger than {MAX_METADATA} bytes")
    return data


def _mapped(path: str, what: str) -> mmap | bytes:
    """The file at `path` mapped read-only (bytes when empty): searched in the page cache, never
    copied. A start is a freshly forked child, where reading 1.6 MB (images.json of 1,000
    images) into new memory cost 1.2 ms of page faults and copying, the mapping ~0.1 ms.
    containers-storage replaces these files by rename, so a mapped file is never cut short."""
    import mmap

    fd, st = _open(path, what)
    try:
        if st.st_size > MAX_METADATA:
            raise OciError(f"{what} {path} is larger than {MAX_METADATA} bytes")
        return mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) if st.st_size else b""
    except (OSError, ValueError) as exc:
        raise OciError(f"cannot read {what} {path}: {exc}") from None
    finally:
        os.close(fd)


def _parse(data: bytes, path: str, what: str):
    try:
        return parse(data.decode("utf-8"), what)
    except (OciError, UnicodeDecodeError) as exc:  # half-written or corrupt: the policy decides
        raise OciError(f"{what} {path} is not valid JSON ({str(exc)[:80]})") from None


def _read(path: str, what: str):
    return _parse(_read_bytes(path, what), path, what)


# -- finding one entry without parsing the others ---------------------------------------------
# containers.json and images.json are arrays written by containers-storage (Go's encoding/json:
# compact, each entry an object whose first key is "id", no nested object starting with "id",
# hex digits never \u-escaped). A caller sets only values, and inside a JSON string every '"' is
# escaped, so the bytes `"layer":"<hex>"` or `{"id":"<hex>"` can only be that key and value. The
# first place the value's bytes appear at all must be that key (so no earlier entry holds the
# value, in any key order or spacing); the entry around it is cut at the entry boundaries
# (`},{"id":"`) and parsed alone, and used only when it parses as one object carrying that value.
# Anything else (the value first seen elsewhere: a container named after a layer id; a file not
# framed as an array; a cut that is not one object) parses the whole file: the same answer, the
# old cost.

_START = b'{"id":"'
_NEXT = b'},{"id":"'
_JSON_WS = b" \t\n\r"
_UNSURE = object()


def _hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _search(data: mmap | bytes, needle: bytes, key: str, value: str, what: str):
    """The first array entry whose KEY is VALUE (NEEDLE: the key and the quoted value); _UNSURE when
    the bytes do not settle it."""
    if data[:64].lstrip(_JSON_WS)[:1] != b"[" or data[-64:].rstrip(_JSON_WS)[-1:] != b"]":
        return _UNSURE
    at = data.find(value.encode()) - (len(needle) - len(value) - 1)  # where the needle starts if it is the first hit
    if at < 0 or data[at:at + len(needle)] != needle:
        return _UNSURE
    start = data.rfind(_START, 0, at + len(_START))
    if start < 0 or not (data[start - 2:start] == b"}," or data[:start].strip(_JSON_WS) == b"["):
        return _UNSURE
    end = data.find(_NEXT, at)
    end = end + 1 if end >= 0 else data.rfind(b"]")  # the array's end (framing checked above)
    try:
        entry = parse(data[start:end].decode("utf-8"), what)
    except (OciError, UnicodeDecodeError):
        return _UNSURE
    return entry if isinstance(entry, dict) and entry.get(key) == value else _UNSURE


def _find(path: str, what: str, key: str, value: str) -> dict | None:
    """The first entry of the array in PATH whose KEY is VALUE (raises OciError when unreadable)."""
    data = _mapped(path, what)
    try:
        if _hex64(value):
            needle = b'"layer":"' + value.encode() + b'"' if key == "layer" else _START + value.encode() + b'"'
            entry = _search(data, needle, key, value, what)
            if entry is not _UNSURE:
                return entry
        whole = _parse(data[:], path, what)
    finally:
        if not isinstance(data, bytes):
            data.close()
    return next((e for e in _list(whole, os.path.basename(path)) if e.get(key) == value), None)


_LAST: dict[tuple, dict | None] = {}  # one start asks for its container twice (its id, its image)


def _container_entry(graph: str, driver: str, layer: str) -> dict | None:
    """The containers.json entry whose layer is this rootfs (raises OciError when unreadable)."""
    path = os.path.join(graph, f"{driver}-containers", "containers.json")
    try:
        st = os.lstat(path)
        key = (path, st.st_ino, st.st_mtime_ns, st.st_size, layer)
    except OSError:
        key = None
    if key is not None and key in _LAST:
        return _LAST[key]
    entry = _find(path, "container metadata", "layer", layer)
    if key is not None:
        _LAST.clear()
        _LAST[key] = entry
    return entry


def container_for_rootfs(root_path: str) -> dict | None:
    """{"id", "names", "image"} of the container the engine recorded for this rootfs, or None. Never raises."""
    where = split_root(root_path)
    try:
        entry = _container_entry(*where) if where else None
    except OciError:
        return None
    if not entry or not isinstance(entry.get("id"), str):
        return None
    return {"id": entry["id"][:64], "names": [n for n in entry.get("names") or [] if isinstance(n, str)],
            "image": str(entry.get("image") or "")[:64]}


def image_for_rootfs(root_path: str) -> Image:
    """Never raises: what cannot be read becomes Image.unknown(reason) for the policy to judge."""
    where = split_root(root_path)
    if where is None:
        return Image.unknown(f"rootfs {root_path[:200]} is not in containers-storage")
    graph, driver, layer = where
    try:
        entry = _container_entry(graph, driver, layer)
        if entry is None:
            return Image.unknown(f"no container uses layer {layer[:12]}")
        image_id = entry.get("image") or ""
        if not isinstance(image_id, str):
            return Image.unknown("containers.json names its image with a non-string")
        if not image_id:
            return Image(refs=[], id="", labels={})  # created from a bare rootfs: no image, no labels
        image = _find(os.path.join(graph, f"{driver}-images", "images.json"), "image metadata", "id", image_id)
        if image is None:
            return Image.unknown(f"image {image_id[:12]} is not in images.json")
        key = "sha256:" + image_id
        blob = os.path.join(graph, f"{driver}-images", image_id, "=" + binascii.b2a_base64(key.encode(), newline=False).decode())
        config = _read(blob, "image config")
        cfg = config.get("config") if isinstance(config, dict) else None
        cfg = cfg if isinstance(cfg, dict) else {}
        labels = cfg["Labels"] if isinstance(cfg.get("Labels"), dict) else {}
        exposed = cfg["ExposedPorts"] if isinstance(cfg.get("ExposedPorts"), dict) else {}
        names = [n for n in image.get("names") or [] if isinstance(n, str)]
        # Trust rules judge the reference the container was created from, not every alias
        # the same image id carries (podman records it in the container's metadata).
        ran = _metadata(entry).get("image-name")
        if isinstance(ran, str) and ran:
            names = [ran]
        return Image(refs=names, id=image_id, labels={k: v for k, v in labels.items() if isinstance(v, str)},
                     exposed=list(exposed), digest=str(image.get("digest") or ""))
    except OciError as exc:
        return Image.unknown(str(exc))
    except (TypeError, AttributeError, ValueError) as exc:  # metadata of the wrong shape
        return Image.unknown(f"malformed storage metadata ({type(exc).__name__})")


def _metadata(entry: dict) -> dict:
    raw = entry.get("metadata")
    try:
        meta = parse(raw, "container metadata") if isinstance(raw, str) else {}
    except OciError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _list(value, what: str) -> list[dict]:
    if not isinstance(value, list):
        raise OciError(f"{what} is not a JSON array")
    return [v for v in value if isinstance(v, dict)]
