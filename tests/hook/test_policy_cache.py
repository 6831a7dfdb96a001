"""tiergate.policy.cache: one JSON read on a fresh cache, recompiles on change, never fatal."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import SHIPPED_POLICY
from tiergate.core.errors import PolicyError
from tiergate.policy import cache, compile as compile_mod


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "policy.toml"
    path.parent.mkdir()
    shutil.copy(SHIPPED_POLICY, path)
    return path


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count compile_file calls (cache.load_compiled imports it lazily from the compile module)."""
    calls: list[str] = []
    real = compile_mod.compile_file

    def counted(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(compile_mod, "compile_file", counted)
    return calls


def _entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.iterdir() if p.name.endswith(".json") and p.name != cache.LOCK]
    return entry


def test_fresh_cache_is_reused_without_recompiling(policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second load reads the cache: compile_file is not called again (it would raise)."""
    first = cache.load_compiled(str(policy_file), str(tmp_path / "cache"))

    def boom(path):
        raise AssertionError("recompiled a fresh policy")

    monkeypatch.setattr(compile_mod, "compile_file", boom)
    second = cache.load_compiled(str(policy_file), str(tmp_path / "cache"))
    assert second == first
    assert {"privileged", "baseline", "restricted", "isolated"} <= set(first["tiers"])


def test_changed_policy_is_recompiled(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    """A new content and mtime invalidate the cache; the new policy is what is returned."""
    cache_dir = str(tmp_path / "cache")
    before = cache.load_compiled(str(policy_file), cache_dir)
    policy_file.write_text(policy_file.read_text().replace('default_tier = "baseline"', 'default_tier = "restricted"'))
    st = policy_file.stat()
    os.utime(policy_file, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    after = cache.load_compiled(str(policy_file), cache_dir)
    assert len(counting) == 2
    assert before["default_tier"] == "baseline" and after["default_tier"] == "restricted"
    assert after["digest"] != before["digest"]
    assert cache.load_compiled(str(policy_file), cache_dir) == after and len(counting) == 2


def test_touched_policy_is_recompiled(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    """Only the mtime changes: compiling again is the safe answer."""
    cache_dir = str(tmp_path / "cache")
    cache.load_compiled(str(policy_file), cache_dir)
    st = policy_file.stat()
    os.utime(policy_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    cache.load_compiled(str(policy_file), cache_dir)
    assert len(counting) == 2


def test_new_seccomp_profile_beside_the_policy_invalidates(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    """Files the policy may read (its seccomp/ dir) are inputs of the cache too."""
    cache_dir = str(tmp_path / "cache")
    cache.load_compiled(str(policy_file), cache_dir)
    (policy_file.parent / "seccomp").mkdir()
    (policy_file.parent / "seccomp" / "extra.json").write_text("{}")
    cache.load_compiled(str(policy_file), cache_dir)
    assert len(counting) == 2


@pytest.mark.parametrize("where", ["under a regular file", "on /proc"])
def test_unwritable_cache_dir_still_works(policy_file: Path, tmp_path: Path, where: str, counting: list[str]) -> None:
    """A cache that cannot be written costs speed only: the policy is compiled every time, no error.

    (Runs as root in CI, so "unwritable" is a path that cannot exist rather than a chmod.)
    """
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache_dir = str(blocker / "cache") if where == "under a regular file" else "/proc/tiergate-cache"
    a = cache.load_compiled(str(policy_file), cache_dir)
    b = cache.load_compiled(str(policy_file), cache_dir)
    assert a == b and len(counting) == 2
    assert not os.path.exists(cache_dir)


CORRUPT = [
    ("empty", b""),
    ("truncated JSON", b'{"format": 1, "tiers": {'),
    ("not UTF-8", b"\xff\xfe{}"),
    ("stale format", b'{"format": 0, "inputs": []}'),
    ("wrong inputs", b'{"format": 1, "inputs": [["/nope", 1, 2, 3]], "tiers": {}}'),
]


@pytest.mark.parametrize("content", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_cache_file_is_ignored(policy_file: Path, tmp_path: Path, content: bytes, counting: list[str]) -> None:
    """A corrupt or stale cache entry is recompiled over, and the entry is repaired."""
    cache_dir = tmp_path / "cache"
    good = cache.load_compiled(str(policy_file), str(cache_dir))
    _entry(cache_dir).write_bytes(content)
    repaired = cache.load_compiled(str(policy_file), str(cache_dir))
    assert _compiled(repaired) == _compiled(good) and repaired["generation"] != good["generation"]
    assert len(counting) == 2
    assert cache.load_compiled(str(policy_file), str(cache_dir)) == repaired and len(counting) == 2


NON_OBJECT = [("array", b"[]"), ("null", b"null"), ("string", b'"x"'), ("deep nesting", b"[" * 100_000)]


@pytest.mark.parametrize("content", [c[1] for c in NON_OBJECT], ids=[c[0] for c in NON_OBJECT])
def test_cache_file_that_is_valid_json_but_not_an_object_is_ignored(policy_file: Path, tmp_path: Path, content: bytes) -> None:
    """A cache entry holding `[]`, `null` or deeply nested JSON is corrupt too: recompile, never crash."""
    cache_dir = tmp_path / "cache"
    good = cache.load_compiled(str(policy_file), str(cache_dir))
    _entry(cache_dir).write_bytes(content)
    assert _compiled(cache.load_compiled(str(policy_file), str(cache_dir))) == _compiled(good)


def _compiled(policy: dict) -> dict:
    """The policy without its generation (a recompile writes a new one)."""
    return {k: v for k, v in policy.items() if k != "generation"}


def test_broken_policy_raises_policy_error_and_is_not_cached(tmp_path: Path) -> None:
    """The caller fails closed on a broken policy; nothing is written to the cache."""
    path = tmp_path / "policy.toml"
    path.write_text("version = 1\n[tiers.a\n")
    with pytest.raises(PolicyError, match=r":2: invalid TOML"):
        cache.load_compiled(str(path), str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() or not [p for p in (tmp_path / "cache").iterdir() if p.name != cache.LOCK]


def test_cache_entry_is_private_and_atomic(policy_file: Path, tmp_path: Path) -> None:
    """The cache dir and generation dir are 0700, every file 0600, and no temp file is left behind:
    the head, and one generation holding a file per tier and the trust index."""
    cache_dir = tmp_path / "cache"
    policy = cache.load_compiled(str(policy_file), str(cache_dir))
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    entry = _entry(cache_dir)
    (gen,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([entry.name, gen.name, cache.LOCK])
    assert sorted(p.name for p in gen.iterdir()) == sorted([f"{t}.json" for t in policy["tiers"]] + ["trust-0.idx"])
    assert gen.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in [entry, *gen.iterdir()]} == {0o600}


def test_policy_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--policy beats $TIERGATE_POLICY, which beats the system and shipped defaults; paths are absolute."""
    monkeypatch.setenv("TIERGATE_POLICY", str(tmp_path / "env.toml"))
    assert cache.policy_path(str(tmp_path / "cli.toml")) == str(tmp_path / "cli.toml")
    assert cache.policy_path() == str(tmp_path / "env.toml")
    monkeypatch.delenv("TIERGATE_POLICY")
    monkeypatch.chdir(tmp_path)
    assert cache.policy_path("rel.toml") == str(tmp_path / "rel.toml")
    assert cache.policy_path().endswith("policy.toml")


def test_cache_dir_from_environment(policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$TIERGATE_CACHE_DIR is used when no cache dir is passed."""
    monkeypatch.setenv("TIERGATE_CACHE_DIR", str(tmp_path / "envcache"))
    cache.load_compiled(str(policy_file))
    assert list((tmp_path / "envcache").iterdir())


def test_cache_format_matches_compiler() -> None:
    """cache.FORMAT and compile.FORMAT must move together, or every start recompiles (or worse)."""
    assert cache.FORMAT == compile_mod.FORMAT


# -- what the cache trusts (issue 15: a mountable, editable cache switched tiergate off) --

@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_group_or_other_writable_policy_is_refused(policy_file: Path, tmp_path: Path, mode: int) -> None:
    policy_file.chmod(mode)
    with pytest.raises(PolicyError, match=r"policy file .* is writable by group or others \(mode 0" + f"{mode:o}"):
        cache.load_compiled(str(policy_file), str(tmp_path / "cache"))


def test_writable_policy_directory_is_refused(policy_file: Path, tmp_path: Path) -> None:
    policy_file.parent.chmod(0o777)
    with pytest.raises(PolicyError, match=r"policy file directory .* writable by group or others"):
        cache.load_compiled(str(policy_file), str(tmp_path / "cache"))


def test_symlink_in_a_writable_directory_is_refused(policy_file: Path, tmp_path: Path) -> None:
    """The link's own directory counts: whoever may write it can point the link elsewhere."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = shared / "policy.toml"
    link.symlink_to(policy_file)
    with pytest.raises(PolicyError, match=r"policy file directory .*shared is writable by group or others"):
        cache.load_compiled(str(link), str(tmp_path / "cache"))


def test_each_profile_is_judged_where_it_really_is_though_its_directory_is_checked_once(
        policy_file: Path, tmp_path: Path) -> None:
    """policy_inputs resolves and checks each directory once per pass: a later profile of an
    already-checked directory that is a symlink into a writable one is still refused, and so is one
    whose directory is a link into a writable place."""
    profiles = policy_file.parent / "seccomp"
    profiles.mkdir()
    (profiles / "a.json").write_text("{}")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "b.json").write_text("{}")
    shared.chmod(0o777)
    (profiles / "b.json").symlink_to(shared / "b.json")
    with pytest.raises(PolicyError, match=r"policy input directory .*shared is writable by group or others"):
        cache.policy_inputs(str(policy_file))
    (profiles / "b.json").unlink()
    cache.policy_inputs(str(policy_file))  # the control: the same directory without the link is trusted
    profiles.rename(shared / "seccomp")
    profiles.symlink_to(shared / "seccomp")
    with pytest.raises(PolicyError, match=r"policy input directory .*shared/seccomp is writable by group"):
        (shared / "seccomp").chmod(0o777)
        cache.policy_inputs(str(policy_file))


def test_policy_owned_by_another_user_is_refused(policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Owner is judged against the invoking user: as uid 4242, a root-owned file is fine, a uid 999 one is not."""
    real_stat = os.stat

    def foreign(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        if str(path) == str(policy_file):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 999, st.st_gid, *tuple(st)[6:]))
        return st

    monkeypatch.setattr(cache.os, "stat", foreign)
    monkeypatch.setattr(cache.os, "geteuid", lambda: 4242)
    with pytest.raises(PolicyError, match=r"owned by uid 999, not root or uid 4242"):
        cache.load_compiled(str(policy_file), str(tmp_path / "cache"))


def test_rootless_hook_accepts_host_roots_files_as_the_unmapped_uid(policy_file: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """In the user's namespace host root's files show as the overflow uid: trusted (not writable by others);
    any other owner still is not."""
    real_stat = os.stat

    def owned_by(uid):
        def fake(path, *a, **kw):
            st = real_stat(path, *a, **kw)
            if str(path) == str(policy_file):
                return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, uid, st.st_gid, *tuple(st)[6:]))
            return st
        return fake

    monkeypatch.setattr(cache, "_unmapped_uid", lambda: 65534)
    monkeypatch.setattr(cache.os, "stat", owned_by(65534))
    assert cache.load_compiled(str(policy_file), str(tmp_path / "cache"))["tiers"]
    monkeypatch.setattr(cache.os, "stat", owned_by(1234))
    with pytest.raises(PolicyError, match="owned by uid 1234"):
        cache.load_compiled(str(policy_file), str(tmp_path / "cache2"))
    monkeypatch.setattr(cache, "_unmapped_uid", lambda: None)  # outside a user namespace: nobody is nobody
    monkeypatch.setattr(cache.os, "stat", owned_by(65534))
    with pytest.raises(PolicyError, match="owned by uid 65534"):
        cache.load_compiled(str(policy_file), str(tmp_path / "cache3"))


def test_writable_cache_entry_is_refused_not_recompiled(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    """A cache entry someone else could have edited is refused (fail closed), never used or silently replaced."""
    cache_dir = tmp_path / "cache"
    cache.load_compiled(str(policy_file), str(cache_dir))
    _entry(cache_dir).chmod(0o666)
    with pytest.raises(PolicyError, match=r"compiled policy cache .* writable by group or others"):
        cache.load_compiled(str(policy_file), str(cache_dir))


def test_writable_cache_dir_is_refused(policy_file: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache.load_compiled(str(policy_file), str(cache_dir))
    cache_dir.chmod(0o770)
    with pytest.raises(PolicyError, match=r"policy cache directory .* writable by group or others \(mode 0770\)"):
        cache.load_compiled(str(policy_file), str(cache_dir))


@pytest.mark.parametrize("how", ["deleted", "dangling symlink"])
def test_missing_configured_policy_is_an_error_even_with_a_good_cache(policy_file: Path, tmp_path: Path, how: str) -> None:
    cache_dir = str(tmp_path / "cache")
    link = tmp_path / "link.toml"
    link.symlink_to(policy_file)
    cache.load_compiled(str(link), cache_dir)
    if how == "deleted":
        link.unlink()
    else:
        policy_file.unlink()
    with pytest.raises(PolicyError, match="configured policy file (does not exist|is a dangling symlink)"):
        cache.load_compiled(str(link), cache_dir)


def test_system_policy_once_used_never_falls_back_to_the_shipped_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc" / "policy.toml"
    system.parent.mkdir()
    shutil.copy(SHIPPED_POLICY, system)
    monkeypatch.delenv("TIERGATE_POLICY", raising=False)
    monkeypatch.setattr(cache, "SYSTEM_POLICY", str(system))
    cache_dir = str(tmp_path / "cache")
    assert cache.load_compiled(None, cache_dir)["file"] == str(system)
    system.unlink()
    assert cache.policy_path(None, cache_dir) == str(system)
    with pytest.raises(PolicyError, match="does not exist"):
        cache.load_compiled(None, cache_dir)
    assert cache.policy_path(None, str(tmp_path / "other-cache")).endswith("tiergate/configs/policy.toml")


# -- rollout: the last good policy keeps containers starting ---------------------------

BROKEN = "version = 1\n[tiers.a\n"


def _break(path: Path) -> None:
    st = path.stat()
    path.write_text(BROKEN)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))


def test_broken_save_keeps_the_last_good_policy_marked_stale(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    cache_dir = str(tmp_path / "cache")
    good = cache.load_compiled(str(policy_file), cache_dir)
    _break(policy_file)
    stale = cache.load_compiled(str(policy_file), cache_dir)
    assert stale["digest"] == good["digest"] and stale["tiers"] == good["tiers"]
    assert re.search(r"policy\.toml:2: invalid TOML", stale["stale"])
    again = cache.load_compiled(str(policy_file), cache_dir)
    assert again["stale"] == stale["stale"] and len(counting) == 2  # the failure is remembered: no compile per start
    shutil.copy(SHIPPED_POLICY, policy_file)
    fixed = cache.load_compiled(str(policy_file), cache_dir)
    assert "stale" not in fixed and len(counting) == 3


def test_apply_switches_atomically_and_refuses_a_broken_file(policy_file: Path, tmp_path: Path, counting: list[str]) -> None:
    cache_dir = str(tmp_path / "cache")
    before = cache.load_compiled(str(policy_file), cache_dir)
    new = tmp_path / "new.toml"
    new.write_text(Path(SHIPPED_POLICY).read_text().replace('default_tier = "baseline"', 'default_tier = "restricted"'))
    bad = tmp_path / "bad.toml"
    bad.write_text(BROKEN)
    live_text = policy_file.read_text()
    with pytest.raises(PolicyError, match=r"bad\.toml:2: invalid TOML"):
        cache.apply(str(bad), str(policy_file), cache_dir)
    assert policy_file.read_text() == live_text
    assert cache.load_compiled(str(policy_file), cache_dir) == before
    applied = cache.apply(str(new), str(policy_file), cache_dir)
    assert policy_file.read_text() == new.read_text() and policy_file.stat().st_mode & 0o777 == 0o644
    n = len(counting)
    loaded = cache.load_compiled(str(policy_file), cache_dir)
    assert loaded["default_tier"] == "restricted" and loaded["digest"] == applied["digest"]
    assert len(counting) == n  # apply stored the entry: the next start compiles nothing
    assert not [p for p in policy_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_compiles_are_serialised_by_the_lock(policy_file: Path, tmp_path: Path) -> None:
    """While one process holds the compile lock, a start that must compile waits for it."""
    import fcntl
    import threading
    import time

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    fd = os.open(cache_dir / cache.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done: list[float] = []
    t = threading.Thread(target=lambda: (cache.load_compiled(str(policy_file), str(cache_dir)), done.append(time.monotonic())))
    t.start()
    time.sleep(0.5)
    assert not done
    released = time.monotonic()
    os.close(fd)
    t.join(30)
    assert done and done[0] >= released
