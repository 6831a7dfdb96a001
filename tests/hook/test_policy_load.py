"""tiergate.policy.load: TOML -> attrs model, every error one `file:line: reason` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.core.errors import PolicyError
from tiergate.policy.load import load, locate, parse
from tiergate.policy.model import PolicyFile, TierSpec

HEAD = 'version = 1\ndefault_tier = "a"\ndefault_ceiling = "a"\n'  # lines 1-3
TIER = '\n[tiers.a]\nstrictness = 1\n'  # lines 4-6; a key appended lands on line 7


def policy(*extra: str, head: str = HEAD) -> str:
    return head + TIER + "".join(extra)


# (id, text, line, message)
CASES = [
    ("broken table header", "version = 1\n[tiers.a\n", 2,
     "invalid TOML: Expected ']' at the end of a table declaration"),
    ("unterminated string", 'version = 1\nx = "abc\n', 2, "invalid TOML: Illegal character '\\n'"),
    ("unknown top-level key", "version = 1\nbogus = 2\n" + TIER, 2, "unknown key 'bogus' @ $.bogus"),
    ("unknown tier key", policy('colour = "red"\n'), 7, "unknown key 'colour' @ $.tiers.a.colour"),
    ("unknown trust key", policy('\n[[trust]]\nmatch = "*"\nmax_tier = "a"\n\n[[trust]]\nmatch = "x"\nmax_tier = "a"\nfoo = 1\n'),
     15, "unknown key 'foo' @ $.trust[1].foo"),
    ("unknown sensitive key", policy('\n[sensitive]\nfiles = ["/"]\n'), 9, "unknown key 'files' @ $.sensitive.files"),
    ("string where int (no 1 -> '1')", policy().replace("strictness = 1", 'strictness = "1"'), 6,
     "invalid value (expected int, got str '1') @ $.tiers.a.strictness"),
    ("int where string", policy("description = 1\n"), 7,
     "invalid value (expected str, got int 1) @ $.tiers.a.description"),
    ("'yes' where bool", policy('passthrough = "yes"\n'), 7,
     "invalid value (expected bool, got str 'yes') @ $.tiers.a.passthrough"),
    ("bool where int", policy().replace("strictness = 1", "strictness = true"), 6,
     "invalid value (expected int, got bool True) @ $.tiers.a.strictness"),
    ("int where bool", policy("no_new_privileges = 1\n"), 7,
     "invalid value (expected bool, got int 1) @ $.tiers.a.no_new_privileges"),
    ("list item of the wrong type", policy('capabilities = ["CAP_CHOWN", 5]\n'), 7,
     "invalid value (expected str, got int 5) @ $.tiers.a.capabilities[1]"),
    ("missing version", policy(head=HEAD.replace("version = 1\n", "")), 1,
     "missing key 'version' (this tiergate reads version = 1)"),
    ("future version", policy(head=HEAD.replace("version = 1", "version = 2")), 1,
     "unsupported policy version 2 (this tiergate reads version = 1)"),
    ("version as a string", policy(head=HEAD.replace("version = 1", 'version = "1"')), 1,
     "unsupported policy version '1' (this tiergate reads version = 1)"),
    ("bad tier enum", policy('on_escalation = "maybe"\n'), 7,
     "invalid value 'maybe': expected one of 'clamp', 'refuse' @ $.tiers.a.on_escalation"),
    ("bad apparmor enum", policy('apparmor = "on"\n'), 7,
     "invalid value 'on': expected one of 'off', 'prefer', 'require' @ $.tiers.a.apparmor"),
    ("bad over_ceiling enum", policy(head=HEAD + 'over_ceiling = "ignore"\n'), 4,
     "invalid value 'ignore': expected one of 'clamp', 'refuse' @ $.over_ceiling"),
    ("bad on_error enum", policy(head='version = 1\non_error = "explode"\ndefault_tier = "a"\n'), 2,
     "invalid value 'explode': expected one of 'refuse', 'allow' @ $.on_error"),
    ("trust rule without max_tier", policy('\n[[trust]]\nmatch = "*"\n'), 8,
     "missing key 'max_tier' @ $.trust[0].max_tier"),
]


@pytest.mark.parametrize(("text", "line", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_policy_names_file_line_and_reason(text: str, line: int, message: str) -> None:
    """Each broken policy raises PolicyError with the exact line and one-line reason."""
    with pytest.raises(PolicyError) as info:
        parse(text, "p.toml")
    err = info.value
    assert (err.file, err.line, err.reason) == ("p.toml", line, message)
    assert str(err) == f"p.toml:{line}: {message}"
    assert "\n" not in str(err)


def test_toml_error_at_end_of_document_points_at_last_line() -> None:
    """A document that ends mid-value is reported on its last line."""
    with pytest.raises(PolicyError) as info:
        parse("version = 1\nx = [1,\n", "p.toml")
    assert info.value.line is not None and info.value.line >= 2
    assert info.value.reason.startswith("invalid TOML: ")


# A string where a list is expected must not be split into characters.
STRING_FOR_LIST = [
    ("capabilities", 'capabilities = "CAP_CHOWN"\n'),
    ("sysctls", 'sysctls = "net.core"\n'),
    ("masked_paths", 'masked_paths = "/proc"\n'),
    ("sensitive.paths", '\n[sensitive]\npaths = "/etc"\n'),
]


@pytest.mark.parametrize("extra", [c[1] for c in STRING_FOR_LIST], ids=[c[0] for c in STRING_FOR_LIST])
def test_string_where_list_expected_is_an_error(extra: str) -> None:
    """`sysctls = "net.core"` is a type error, not ['n', 'e', 't', ...] (no coercion)."""
    with pytest.raises(PolicyError, match=r"expected list"):
        parse(policy(extra), "p.toml")


def test_valid_policy_structures_into_the_model() -> None:
    """A small valid policy becomes PolicyFile/TierSpec with unset fields left None (inherit)."""
    model = parse(policy('capabilities = ["CAP_CHOWN"]\n\n[tiers.b]\nextends = "a"\n'), "p.toml")
    assert isinstance(model, PolicyFile)
    assert model.version == 1 and model.default_tier == "a"
    assert isinstance(model.tiers["b"], TierSpec)
    assert model.tiers["a"].capabilities == ["CAP_CHOWN"]
    assert model.tiers["b"].capabilities is None and model.tiers["b"].extends == "a"


def test_load_reads_a_file_and_returns_its_text(tmp_path: Path) -> None:
    """load() returns the model and the exact text it parsed (for digests and line lookups)."""
    path = tmp_path / "policy.toml"
    path.write_text(policy())
    model, text = load(path)
    assert text == policy() and model.tiers["a"].strictness == 1


def test_load_error_names_the_file(tmp_path: Path) -> None:
    """Errors from load() carry the file's path, not a placeholder."""
    path = tmp_path / "policy.toml"
    path.write_text(policy('colour = "red"\n'))
    with pytest.raises(PolicyError) as info:
        load(path)
    assert str(info.value) == f"{path}:7: unknown key 'colour' @ $.tiers.a.colour"


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read policy: No such file or directory"),
    (b"version = 1\n\xff\xfe\n", "cannot read policy: 'utf-8' codec can't decode byte 0xff in position 12: invalid start byte"),
], ids=["missing file", "not UTF-8"])
def test_unreadable_policy_is_one_line(tmp_path: Path, content: bytes | None, reason: str) -> None:
    """A missing or non-UTF-8 file is a PolicyError naming the file, no traceback."""
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PolicyError) as info:
        load(path)
    assert str(info.value) == f"{path}: {reason}"


def test_policy_directory_is_a_policy_error(tmp_path: Path) -> None:
    """A directory given as the policy is reported, not raised as IsADirectoryError."""
    with pytest.raises(PolicyError, match=r"^.*: cannot read policy: Is a directory$"):
        load(tmp_path)


LOCATE = [
    ("top-level key", ["default_tier"], 2),
    ("table", ["tiers", "a"], 5),
    ("key in table", ["tiers", "a", "strictness"], 6),
    ("array of tables, second entry", ["trust", 1, "max_tier"], 14),
    ("missing key falls back to its table", ["tiers", "a", "nothing"], 5),
]


@pytest.mark.parametrize(("keys", "line"), [c[1:] for c in LOCATE], ids=[c[0] for c in LOCATE])
def test_locate_finds_key_paths(keys: list, line: int) -> None:
    """locate() maps a key path to its 1-based line in the TOML text."""
    text = policy('\n[[trust]]\nmatch = "*"\nmax_tier = "a"\n\n[[trust]]\nmatch = "x"\nmax_tier = "a"\n')
    assert locate(text, keys) == line


def test_label_sources_the_loader_accepts_are_the_names_table() -> None:
    """policy/model.py's Literal (what cattrs accepts) and core/names.LABEL_SOURCES name the same sources."""
    import typing

    from tiergate.core.names import LABEL_SOURCES
    from tiergate.policy.model import PolicyFile

    hint = typing.get_type_hints(PolicyFile)["label_sources"]
    assert set(typing.get_args(typing.get_args(hint)[0])) == set(LABEL_SOURCES)
    assert PolicyFile(version=1).label_sources == list(LABEL_SOURCES)
