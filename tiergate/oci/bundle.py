"""Read and write a bundle's config.json safely; hot path, standard library only.

The bundle directory is chosen by the engine, but config.json inside it is
opened without following symlinks: a hook running as root must not be
turned into a reader or writer of /etc/shadow.  config.json is replaced
atomically (temp file beside + rename), so a reader never sees half a spec; the
documents that live for one runtime command (exec's --process file) are
rewritten in place (write_json_file says why).
"""

from __future__ import annotations

import os
import stat

from tiergate.oci import jsonio
from tiergate.oci.errors import BundleError

CONFIG = "config.json"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
_REWRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


def _why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def real_path(path: str) -> str:
    """os.path.realpath(path), asked of the kernel when the path exists: opened (O_PATH) and read
    back from /proc/self/fd (~10 K instructions; os.path.realpath's lstat and Python per component
    cost ~0.1 M, several times on every start). Anything else: os.path.realpath."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = ""
    finally:
        os.close(fd)
    return real if real.startswith("/") and not real.endswith(" (deleted)") else os.path.realpath(path)


def _open_dir(bundle: str) -> tuple[int, str]:
    """Open the resolved bundle directory; return (fd, absolute path)."""
    path = real_path(bundle)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path
    except OSError as e:
        raise BundleError(f"cannot open bundle {path}: {_why(e)}") from None


def _read_at(name: str, display: str, what: str, dir_fd: int | None = None) -> dict:
    """Open ``name`` (relative to ``dir_fd``) without following a final symlink and parse it."""
    return jsonio.loads(_read_bytes(name, display, dir_fd), what)


def _open_file(name: str, flags: int, display: str, verb: str, dir_fd: int | None = None) -> int:
    """os.open with O_NOFOLLOW among `flags`; a failure is one BundleError line."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        import errno  # here, on the error path: ~0.2 M instructions on every start otherwise

        if e.errno == errno.ELOOP:  # the last component is a symlink
            raise BundleError(f"refusing to follow symlink {display}") from None
        raise BundleError(f"cannot {verb} {display}: {_why(e)}") from None


def _read_bytes(name: str, display: str, dir_fd: int | None = None) -> bytes:
    fd = _open_file(name, _READ_FLAGS, display, "open", dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{display} is not a regular file")
        if st.st_size > jsonio.MAX_BYTES:
            raise BundleError(f"{display} is larger than {jsonio.MAX_BYTES} bytes")
        chunks: list[bytes] = []
        left = jsonio.MAX_BYTES + 1  # one more byte lets loads() see "too large"
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise BundleError(f"cannot read {display}: {_why(e)}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_json_file(path: str, what: str | None = None) -> dict:
    """Read a small JSON object file with the same safety as config.json.

    Only the last component is protected from symlinks: directories above it
    are the caller's choice (e.g. /run/containers may be a link).
    """
    return _read_at(path, path, what or path)


def read_file(path: str) -> bytes:
    """A small file's bytes (at most jsonio.MAX_BYTES + 1), read as read_json_file reads it."""
    return _read_bytes(path, path)


def read_config(bundle: str) -> dict:
    """Return ``bundle/config.json`` as a plain dict (bundle may be relative)."""
    dir_fd, path = _open_dir(bundle)
    try:
        display = os.path.join(path, CONFIG)
        return _read_at(CONFIG, display, display, dir_fd)
    finally:
        os.close(dir_fd)


def write_config(bundle: str, spec: dict) -> None:
    """Replace ``bundle/config.json`` atomically, keeping its owner and mode."""
    _write_at(bundle, CONFIG, spec)


def write_json_file(path: str, obj: dict) -> None:
    """Rewrite ``path`` in place: runc exec's --process file, update's --resources file.

    These are read once, by the runtime this process runs next, and die with the command:
    no one reads them meanwhile, and a crash or a failed write ends the command (the caller
    fails closed), so a rename buys nothing. Renaming over a file the engine has just written
    cost an exec ~0.3 ms on ext4 (its delayed allocation is flushed on a rename over it);
    writing over it costs a few microseconds. Never through a symlink or into
    a file with other names (whose content would change too): those are refused.
    """
    data = jsonio.dumps(obj)
    fd = _open_file(path, _REWRITE_FLAGS, path, "write")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"refusing to rewrite {path}: it is not a regular file")
        if st.st_nlink != 1:
            raise BundleError(f"refusing to rewrite {path}: it has {st.st_nlink} links")
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        if st.st_size > len(data):
            os.ftruncate(fd, len(data))
    except OSError as e:
        raise BundleError(f"cannot write {path}: {_why(e)}") from None
    finally:
        os.close(fd)


def _write_at(directory: str, name: str, obj: dict) -> None:
    """Write beside, rename over ``directory/name``; same owner and mode; never through a
    symlink. On any failure the temp file is removed and the original is untouched.

    The rename is what readers need (runc sees the old file or the new one, never half).
    No fsync: a bundle lives for one start (engines write it anew for every create, and a
    crash ends the container), and where /run is a disk an fsync of the file and its
    directory cost ~3.7 ms of every create here."""
    data = jsonio.dumps(obj)
    dir_fd, path = _open_dir(directory)
    display = os.path.join(path, name)
    tmp = f".{name}.tiergate-{os.getpid()}-{os.urandom(4).hex()}"
    fd = -1
    try:
        try:
            old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            kind = "a symlink" if stat.S_ISLNK(old.st_mode) else "not a regular file"
            raise BundleError(f"refusing to replace {display}: it is {kind}")
        mode = stat.S_IMODE(old.st_mode) if old else 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if old is not None:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (old.st_uid, old.st_gid):
                os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, mode)  # after chown, which may clear set-id bits
        os.close(fd)
        fd = -1
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = ""
    except OSError as e:
        raise BundleError(f"cannot write {display}: {_why(e)}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        os.close(dir_fd)
