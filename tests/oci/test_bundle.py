"""tiergate.oci.bundle: no symlink following, capped reads, atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tiergate.oci import bundle, jsonio
from tiergate.oci.errors import BundleError, SpecError

SPEC = {"ociVersion": "1.3.0", "root": {"path": "rootfs"}}


@pytest.fixture
def bdir(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(json.dumps(SPEC))
    return b


def leftovers(b: Path) -> list[str]:
    return sorted(p.name for p in b.iterdir() if p.name != "config.json")


class TestRead:
    def test_reads_config(self, bdir: Path) -> None:
        assert bundle.read_config(str(bdir)) == SPEC

    def test_relative_bundle_is_resolved(self, bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(bdir.parent)
        assert bundle.read_config("bundle") == SPEC

    @pytest.mark.parametrize("target", ["/etc/shadow", "other.json"])
    def test_symlinked_config_refused(self, bdir: Path, target: str) -> None:
        """A config.json symlink is never followed, wherever it points."""
        (bdir / "other.json").write_text("{}")
        (bdir / "config.json").unlink()
        (bdir / "config.json").symlink_to(target)
        with pytest.raises(BundleError) as info:
            bundle.read_config(str(bdir))
        assert str(info.value) == f"refusing to follow symlink {bdir}/config.json"

    def test_not_a_regular_file(self, bdir: Path) -> None:
        (bdir / "config.json").unlink()
        os.mkfifo(bdir / "config.json")
        with pytest.raises(BundleError) as info:
            bundle.read_config(str(bdir))
        assert str(info.value) == f"{bdir}/config.json is not a regular file"

    def test_missing_config(self, bdir: Path) -> None:
        (bdir / "config.json").unlink()
        with pytest.raises(BundleError) as info:
            bundle.read_config(str(bdir))
        assert str(info.value) == f"cannot open {bdir}/config.json: no such file or directory"

    def test_bundle_not_a_directory(self, bdir: Path) -> None:
        with pytest.raises(BundleError) as info:
            bundle.read_config(str(bdir / "config.json"))
        assert str(info.value) == f"cannot open bundle {bdir}/config.json: not a directory"

    def test_too_large(self, bdir: Path) -> None:
        with open(bdir / "config.json", "wb") as f:
            f.truncate(jsonio.MAX_BYTES + 1)  # sparse: cheap
        with pytest.raises(BundleError) as info:
            bundle.read_config(str(bdir))
        assert str(info.value) == f"{bdir}/config.json is larger than 16777216 bytes"

    def test_parse_errors_name_the_file(self, bdir: Path) -> None:
        (bdir / "config.json").write_bytes(b'{"a": 1, "a": 2}')
        with pytest.raises(SpecError) as info:
            bundle.read_config(str(bdir))
        assert str(info.value) == "duplicate key 'a' @ $.a"
        (bdir / "config.json").write_bytes(b"{")
        with pytest.raises(SpecError, match=rf"^invalid JSON in {bdir}/config.json: "):
            bundle.read_config(str(bdir))

    def test_read_json_file(self, tmp_path: Path) -> None:
        (tmp_path / "x.json").write_text('{"k": 1}')
        (tmp_path / "link.json").symlink_to("x.json")
        assert bundle.read_json_file(str(tmp_path / "x.json")) == {"k": 1}
        with pytest.raises(BundleError, match="^refusing to follow symlink "):
            bundle.read_json_file(str(tmp_path / "link.json"))
        (tmp_path / "x.json").write_text("[]")
        with pytest.raises(SpecError, match=r"^expected an object @ \$$"):
            bundle.read_json_file(str(tmp_path / "x.json"), "hooks file")


class TestWrite:
    def test_replaces_and_keeps_mode(self, bdir: Path) -> None:
        os.chmod(bdir / "config.json", 0o640)
        before = os.stat(bdir / "config.json").st_ino
        bundle.write_config(str(bdir), {**SPEC, "hostname": "h"})
        st = os.stat(bdir / "config.json")
        assert json.loads((bdir / "config.json").read_bytes()) == {**SPEC, "hostname": "h"}
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_ino != before  # a new file was renamed over, not truncated in place
        assert leftovers(bdir) == []

    @pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
    def test_keeps_owner(self, bdir: Path) -> None:
        os.chown(bdir / "config.json", 1234, 5678)
        bundle.write_config(str(bdir), SPEC)
        st = os.stat(bdir / "config.json")
        assert (st.st_uid, st.st_gid) == (1234, 5678)

    def test_new_config_is_0600(self, bdir: Path) -> None:
        (bdir / "config.json").unlink()
        bundle.write_config(str(bdir), SPEC)
        assert stat.S_IMODE(os.stat(bdir / "config.json").st_mode) == 0o600

    def test_failed_rename_leaves_original(self, bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """If the rename fails the original is intact and no temp file is left."""
        original = (bdir / "config.json").read_bytes()

        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(BundleError) as info:
            bundle.write_config(str(bdir), {"other": True})
        assert str(info.value) == f"cannot write {bdir}/config.json: no space left on device"
        assert (bdir / "config.json").read_bytes() == original
        assert leftovers(bdir) == []

    def test_failed_write_leaves_original(self, bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        original = (bdir / "config.json").read_bytes()
        monkeypatch.setattr(os, "fchmod", lambda *a: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        with pytest.raises(BundleError, match="input/output error$"):
            bundle.write_config(str(bdir), {"other": True})
        assert (bdir / "config.json").read_bytes() == original
        assert leftovers(bdir) == []

    def test_no_fsync(self, bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bundle lives for one start: its rewrite is a rename (an exec's process file: a write
        in place), never a wait for the disk."""
        synced: list[int] = []
        monkeypatch.setattr(os, "fsync", synced.append)
        monkeypatch.setattr(os, "fdatasync", synced.append)
        (bdir / "process.json").write_text('{"args": ["sh"]}')
        bundle.write_config(str(bdir), {"other": True})
        bundle.write_json_file(str(bdir / "process.json"), {"args": ["true"]})
        assert synced == [] and json.loads((bdir / "config.json").read_text()) == {"other": True}
        assert json.loads((bdir / "process.json").read_text()) == {"args": ["true"]}

    def test_unserialisable_spec_touches_nothing(self, bdir: Path) -> None:
        original = (bdir / "config.json").read_bytes()
        with pytest.raises(ValueError):
            bundle.write_config(str(bdir), {"x": float("nan")})
        assert (bdir / "config.json").read_bytes() == original
        assert leftovers(bdir) == []

    def test_symlinked_config_not_replaced(self, bdir: Path, tmp_path: Path) -> None:
        target = tmp_path / "target.json"
        target.write_text("{}")
        (bdir / "config.json").unlink()
        (bdir / "config.json").symlink_to(target)
        with pytest.raises(BundleError) as info:
            bundle.write_config(str(bdir), SPEC)
        assert str(info.value) == f"refusing to replace {bdir}/config.json: it is a symlink"
        assert target.read_text() == "{}"
        assert (bdir / "config.json").is_symlink()
        assert leftovers(bdir) == []

    def test_read_only_bundle(self, bdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """EROFS (a read-only bind mount) gives one clear line; simulated as root ignores modes."""
        real_open = os.open

        def ro_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if flags & os.O_CREAT:
                raise OSError(30, "Read-only file system")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", ro_open)
        with pytest.raises(BundleError) as info:
            bundle.write_config(str(bdir), SPEC)
        assert str(info.value) == f"cannot write {bdir}/config.json: read-only file system"



class TestRewriteInPlace:
    """write_json_file (exec's --process file): the same inode rewritten, never through a link."""

    def test_rewrites_the_same_file(self, tmp_path: Path) -> None:
        p = tmp_path / "process.json"
        p.write_text(json.dumps({"args": ["sh", "-c", "x" * 200], "cwd": "/"}))
        p.chmod(0o640)
        before = p.stat()
        bundle.write_json_file(str(p), {"args": ["sh"]})  # shorter: the old tail is cut off
        assert bundle.read_json_file(str(p)) == {"args": ["sh"]}
        after = p.stat()
        assert (after.st_ino, stat.S_IMODE(after.st_mode), after.st_uid) == (before.st_ino, 0o640, before.st_uid)
        bundle.write_json_file(str(p), {"args": ["sh", "-c", "y" * 500]})  # longer
        assert bundle.read_json_file(str(p)) == {"args": ["sh", "-c", "y" * 500]}
        assert sorted(x.name for x in tmp_path.iterdir()) == ["process.json"]

    def test_symlink_refused(self, tmp_path: Path) -> None:
        target = tmp_path / "target.json"
        target.write_text("{}")
        (tmp_path / "process.json").symlink_to(target)
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(str(tmp_path / "process.json"), {"args": ["sh"]})
        assert str(info.value) == f"refusing to follow symlink {tmp_path}/process.json"
        assert target.read_text() == "{}"

    def test_hard_link_refused(self, tmp_path: Path) -> None:
        """A second name would see the rewrite too (a file elsewhere linked in by whoever chose the path)."""
        other = tmp_path / "other.json"
        other.write_text("{}")
        os.link(other, tmp_path / "process.json")
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(str(tmp_path / "process.json"), {"args": ["sh"]})
        assert str(info.value) == f"refusing to rewrite {tmp_path}/process.json: it has 2 links"
        assert other.read_text() == "{}"

    def test_not_a_regular_file(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "fifo.json")  # no reader: the open fails at once, it never blocks
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(str(tmp_path / "fifo.json"), {"args": ["sh"]})
        assert str(info.value) == f"cannot write {tmp_path}/fifo.json: no such device or address"
        (tmp_path / "dir.json").mkdir()
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(str(tmp_path / "dir.json"), {"args": ["sh"]})
        assert str(info.value) == f"cannot write {tmp_path}/dir.json: is a directory"
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(os.devnull, {"args": ["sh"]})
        assert str(info.value) == f"refusing to rewrite {os.devnull}: it is not a regular file"

    def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(BundleError) as info:
            bundle.write_json_file(str(tmp_path / "process.json"), {"args": ["sh"]})
        assert str(info.value) == f"cannot write {tmp_path}/process.json: no such file or directory"


def test_real_path_is_os_path_realpath(tmp_path: Path, monkeypatch) -> None:
    """real_path asks the kernel; whatever the path, the answer is os.path.realpath's."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "rel").symlink_to("d/e")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "up").symlink_to(tmp_path / "d" / "e" / "..")
    monkeypatch.chdir(tmp_path / "d")
    paths = [str(tmp_path / p) for p in ("d", "d/e", "d/f", "link", "link/e", "link/f", "rel", "rel/..",
                                         "dangling", "dangling/x", "loop", "up", "up/f", "d/f/x", "nowhere", "d//e/.")]
    paths += ["", ".", "e", "../link/e", "/", "/proc/self", "/proc/self/fd"]
    for p in paths:
        assert bundle.real_path(p) == os.path.realpath(p), p
