"""tiergate.policy.stored: one file per tier and a trust index; a start's cost is flat in policy size."""

from __future__ import annotations

import os

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import SHIPPED_POLICY, shipped_policy
from tiergate.core.decide import Image, ceiling_for, decide
from tiergate.core.errors import PolicyError
from tiergate.policy import cache, stored

DIGESTS = ["ab" * 32, "cd" * 32, "ef" * 32]


def big_policy_text(tiers: int = 200, rules: int = 1000) -> str:
    """The shipped policy plus generated tiers and trust rules (half digest, half name rules)
    before its catch-all rule."""
    text = Path(SHIPPED_POLICY).read_text()
    extra = []
    for i in range(rules):
        if i % 2:
            extra.append(f'[[trust]]\nmatch = "registry.example/team-{i}/*"\nmax_tier = "gen-{i % tiers}"\n')
        else:
            extra.append(f'[[trust]]\ndigest = "sha256:{i:064x}"\nmax_tier = "gen-{i % tiers}"\n')
    text = text.replace('[[trust]]\nmatch = "*"', "\n".join(extra) + '\n[[trust]]\nmatch = "*"', 1)
    for i in range(tiers - len(shipped_policy()["tiers"])):
        text += f'\n[tiers.gen-{i}]\ndescription = "generated {i}"\nextends = "restricted"\nstrictness = {30 + i}\n'
    for i in range(tiers - len(shipped_policy()["tiers"]), tiers):  # rules may name any gen-N
        text += f'\n[tiers.gen-{i}]\nextends = "baseline"\nstrictness = {30 + i}\n'
    return text


def _stored_view(compiled: dict, cache_dir: str) -> dict:
    entry = cache.entry_path(cache_dir, compiled["file"])
    head = cache._store(entry, dict(compiled, inputs=[]))
    assert head is not None
    return stored.view(head, cache_dir, cache.unsafe, entry)


# -- the index gives exactly the answers of a walk over every rule ----------------------------

CHARS = "ab/:@."
patterns = st.text(alphabet=CHARS + "*?", max_size=7)
names = st.text(alphabet=CHARS, max_size=7)
rule = st.one_of(st.builds(lambda d, t: {"match": None, "digest": d, "max_tier": t, "over_ceiling": "clamp"},
                           st.sampled_from(DIGESTS), st.sampled_from(["privileged", "baseline", "restricted"])),
                 st.builds(lambda p, t: {"match": p, "digest": None, "max_tier": t, "over_ceiling": "refuse"},
                           patterns, st.sampled_from(["privileged", "baseline", "restricted", "isolated"])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule, max_size=12), refs=st.lists(names, max_size=3), pulled=st.lists(names, max_size=2),
       image_id=st.sampled_from(["", *DIGESTS]), digest=st.sampled_from(["", *DIGESTS]),
       per_bucket=st.sampled_from([1, 3, stored.RULES_PER_BUCKET]))
def test_index_answers_as_a_walk_over_every_rule(rules, refs, pulled, image_id, digest, per_bucket) -> None:
    """Same tier, action and rule for any rules and names (separators, wildcards, digests), over one
    index file or many, and the image's pulled names are read exactly when the walk reads them."""
    plain = dict(shipped_policy(), trust=rules)
    cache_dir = tempfile.mkdtemp(prefix="tiergate-stored-")
    default, stored.RULES_PER_BUCKET = stored.RULES_PER_BUCKET, per_bucket
    try:
        lazy = _stored_view(plain, cache_dir)
        reads = {"plain": 0, "lazy": 0}

        def image(which):
            def read():
                reads[which] += 1
                return pulled
            return Image(refs=refs, id=image_id, digest=digest, pulled=read)

        assert ceiling_for(lazy, image("lazy")) == ceiling_for(plain, image("plain"))
        assert reads["lazy"] == reads["plain"]
        assert list(lazy["trust"]) == rules and len(lazy["trust"]) == len(rules)
    finally:
        stored.RULES_PER_BUCKET = default
        shutil.rmtree(cache_dir)


@pytest.mark.parametrize("pattern,name,filed", [
    ("registry.example/team-a/*", "registry.example/team-a/app:1", True),
    ("docker.io/library/nginx:*", "docker.io/library/nginx:1.27", True),
    ("docker.io/library/nginx", "docker.io/library/nginx", True),
    ("reg*/x", "registry/x", True),
    ("*", "anything", True),
    ("registry.example/team-a/*", "registry.example/team-b/app", False),
])
def test_a_rule_is_filed_under_a_key_of_every_name_it_may_match(pattern: str, name: str, filed: bool) -> None:
    assert (stored.pattern_key(pattern) in stored.name_keys(name)) is filed


# -- cost: flat in the number of tiers and rules -----------------------------------------------

def _parsed_bytes(monkeypatch: pytest.MonkeyPatch, policy_file: Path, cache_dir: Path, image: Image) -> int:
    """Bytes of JSON one start parses from the cache: the head, the index lines and the tier files
    it uses to decide and harden (the cache is compiled first, outside the count)."""
    cache.load_compiled(str(policy_file), str(cache_dir))
    parsed = []

    def counting(real):
        def parse(text, *a, **kw):
            parsed.append(len(text))
            return real(text, *a, **kw)
        return parse

    monkeypatch.setattr(cache, "parse", counting(cache.parse))
    monkeypatch.setattr(stored, "parse", counting(stored.parse))
    policy = cache.load_compiled(str(policy_file), str(cache_dir))
    tier = policy["tiers"][decide(policy, image).tier]
    assert tier["capabilities"] is not None and tier["name"]
    monkeypatch.undo()
    return sum(parsed)


def test_a_start_parses_the_same_bytes_with_200_tiers_and_1000_rules(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "small" / "policy.toml"
    big = tmp_path / "big" / "policy.toml"
    for path, text in ((small, Path(SHIPPED_POLICY).read_text()), (big, big_policy_text(200, 1000))):
        path.parent.mkdir()
        path.write_text(text)
    for image in (Image(refs=["registry.example/team-7/app:1"], id="12" * 32, labels={"io.tiergate.tier": "web"}),
                  Image(refs=["docker.io/library/nginx:1.27"], id=f"{998:064x}")):
        a = _parsed_bytes(monkeypatch, small, tmp_path / "small-cache", image)
        b = _parsed_bytes(monkeypatch, big, tmp_path / "big-cache", image)
        # the head lists each tier's strictness (~20 bytes a tier); nothing else grows
        assert b - a < 200 * 24, (a, b)
    assert len(cache.load_compiled(str(big), str(tmp_path / "big-cache"))["trust"]) == 1001


# -- what a start may trust, and generations ---------------------------------------------------

def test_a_damaged_or_foreign_cache_file_fails_closed(tmp_path: Path) -> None:
    """A corrupt or missing tier file refuses this start and makes the next one compile; a file
    others may write, or a symlink, is refused (never followed, never replaced)."""
    policy_file = tmp_path / "policy.toml"
    shutil.copy(SHIPPED_POLICY, policy_file)
    cache_dir = tmp_path / "cache"
    policy = cache.load_compiled(str(policy_file), str(cache_dir))
    (gen,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    (gen / "web.json").write_text("{")
    assert policy["tiers"]["web"]["strictness"] == shipped_policy()["tiers"]["web"]["strictness"]  # from the head
    with pytest.raises(PolicyError, match="compiled policy cache is damaged; the next start compiles"):
        policy["tiers"]["web"]["capabilities"]
    again = cache.load_compiled(str(policy_file), str(cache_dir))
    assert again["tiers"]["web"]["capabilities"] == shipped_policy()["tiers"]["web"]["capabilities"]
    (gen,) = [p for p in cache_dir.iterdir() if p.is_dir() and p != gen]
    (gen / "database.json").chmod(0o644 | 0o002)
    with pytest.raises(PolicyError, match="writable by group or others"):
        dict(again["tiers"]["database"])
    (gen / "isolated.json").unlink()
    (gen / "isolated.json").symlink_to(gen / "baseline.json")
    with pytest.raises(PolicyError, match="cannot read the compiled policy"):
        again["tiers"]["isolated"]["capabilities"]
    assert cache.load_compiled(str(policy_file), str(cache_dir))["digest"] == again["digest"]  # head kept


def test_replaced_generations_go_after_the_grace_period_and_only_ours(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A start may still read the generation it found: it stays GRACE_NS; another policy's
    generations (whose name ours prefixes) are never touched."""
    compiled = shipped_policy()
    other = dict(compiled, file=compiled["file"] + ".x")
    _stored_view(other, str(tmp_path))
    first = _stored_view(compiled, str(tmp_path))
    dirs = lambda: sorted(p.name for p in tmp_path.iterdir() if p.is_dir())  # noqa: E731
    assert len(dirs()) == 2
    second = _stored_view(compiled, str(tmp_path))
    assert len(dirs()) == 3 and first["tiers"]["web"]["capabilities"] == second["tiers"]["web"]["capabilities"]
    monkeypatch.setattr(cache, "GRACE_NS", -1)
    _stored_view(compiled, str(tmp_path))
    assert len(dirs()) == 2
    assert any(".x." in d for d in dirs())


def test_a_replaced_generation_gets_its_grace_from_the_replacement(tmp_path: Path) -> None:
    """A generation written long ago and current until now stays GRACE_NS after it is replaced:
    a start that read its head a moment before reads its tier file after the switch."""
    compiled = shipped_policy()
    first = _stored_view(compiled, str(tmp_path))
    old = next(p for p in tmp_path.iterdir() if p.is_dir())
    long_ago = (os.stat(old).st_mtime_ns - 2 * cache.GRACE_NS) / 1e9
    os.utime(old, (long_ago, long_ago))
    _stored_view(compiled, str(tmp_path))  # the switch
    assert old.is_dir()
    assert first["tiers"]["restricted"]["name"] == "restricted"  # the reader of the old head still reads
