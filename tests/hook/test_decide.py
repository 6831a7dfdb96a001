"""tiergate.core.decide: labels, annotations and trust rules -> one tier, or a Refusal. Pure."""

from __future__ import annotations

import pytest

from helpers import shipped_policy
from tiergate.core.decide import Decision, Image, ceiling_for, decide, show
from tiergate.core.errors import Refusal
from tiergate.policy.compile import compile_policy
from tiergate.policy.load import parse

KEY = "io.tiergate.tier"
DIGEST = "ab" * 32

TEXT = f'''version = 1
default_tier = "mid"
default_ceiling = "mid"
over_ceiling = "clamp"
on_unknown_image = "refuse"

[[trust]]
digest = "sha256:{DIGEST}"
max_tier = "top"

[[trust]]
match = "registry.example/infra/*"
max_tier = "top"

[[trust]]
match = "registry.example/*"
max_tier = "tight"
over_ceiling = "refuse"

[[trust]]
match = "registry.example/infra/evil*"
max_tier = "tight"

[tiers.top]
strictness = 0
passthrough = true

[tiers.low]
strictness = 5  # more privileged than mid (lower strictness)

[tiers.mid]
strictness = 10

[tiers.tight]
strictness = 20
'''


@pytest.fixture(scope="module")
def policy() -> dict:
    return compile_policy(parse(TEXT, "t.toml"), TEXT, "t.toml")


def img(ref: str = "docker.io/library/nginx:1.27", labels: dict | None = None, **kw) -> Image:
    return Image(refs=[ref] if ref else [], labels=labels or {}, **kw)


def pulled(ref: str, labels: dict | None = None, **kw) -> Image:
    """An image the engine recorded as pulled under `ref` with its digest."""
    return img(ref, labels, pulled=[ref], **kw)


# (id, image, annotations, expected tier, requested, words expected in why)
ALLOWED = [
    ("no label: default tier", img(), None, "mid", "mid", ["policy default (no tier label)"]),
    ("label within the default ceiling", img(labels={KEY: "tight"}), None, "tight", "tight", [f"label {KEY}", "tight"]),
    ("label just above the ceiling is clamped", img(labels={KEY: "low"}), None, "mid", "low", ["clamped to mid"]),
    ("label equal to the ceiling", img(labels={KEY: "mid"}), None, "mid", "mid", []),
    ("label above the ceiling is clamped", img(labels={KEY: "top"}), None, "mid", "top",
     ["asks for top, clamped to mid", "default ceiling"]),
    ("trusted glob lifts the ceiling for a pulled name", pulled("registry.example/infra/dns:1", {KEY: "top"}), None,
     "top", "top", ["trust[1] match 'registry.example/infra/*'"]),
    ("a local name (tag, import, commit) lifts nothing: the next rule that matches it applies",
     img("registry.example/infra/dns:1", {KEY: "tight"}), None, "tight", "tight", ["trust[2]"]),
    ("a local name on a clamping path stays at the default ceiling", img("quay.io/infra/dns:1", {KEY: "top"}), None,
     "mid", "top", ["default ceiling"]),
    ("first match wins over a later stricter rule", pulled("registry.example/infra/evil:1", {KEY: "top"}), None, "top", "top",
     ["trust[1]"]),
    ("digest rule on the image id", img("", {KEY: "top"}, id="sha256:" + DIGEST), None, "top", "top",
     [f"trust[0] digest {DIGEST[:12]}"]),
    ("digest rule on the manifest digest", img("docker.io/x:1", {KEY: "top"}, digest="sha256:" + DIGEST), None, "top", "top",
     ["trust[0]"]),
    ("digest rule beats a later glob", img("registry.example/app:1", {KEY: "top"}, id=DIGEST), None, "top", "top",
     ["trust[0]"]),
    ("annotation request honoured within the ceiling", img(labels={KEY: "mid"}), {KEY: "tight"}, "tight", "tight",
     [f"annotation {KEY}"]),
    ("annotation asking for weaker than the image's own tier is ignored", img(labels={KEY: "tight"}), {KEY: "mid"},
     "tight", "tight", ["label", "a caller may only tighten"]),
    ("annotation asking for weaker than the default tier is ignored", img(), {KEY: "top"}, "mid", "mid",
     ["policy default", "a caller may only tighten"]),
    ("container label weaker than the image's own is ignored",
     img(labels={KEY: "tight"}, container_labels={KEY: "mid"}), None, "tight", "tight", ["a caller may only tighten"]),
    ("container label tightens", img(labels={KEY: "mid"}, container_labels={KEY: "tight"}), None, "tight", "tight",
     [f"container label {KEY}"]),
    ("container label equal to the image's own label is the image's", img(labels={KEY: "tight"}, container_labels={KEY: "tight"}),
     None, "tight", "tight", [f"label {KEY}"]),
    ("non-string annotation is ignored", img(labels={KEY: "tight"}), {KEY: 5}, "tight", "tight", ["label"]),
    ("look-alike label key (Cyrillic i) is no label", img(labels={"io.tiergate.t\u0456er": "top"}), None, "mid", "mid",
     ["policy default"]),
    ("look-alike key (fullwidth dot) is no label", img(labels={"io\uff0etiergate.tier": "top"}), None, "mid", "mid",
     ["policy default"]),
    ("key with trailing space is no label", img(labels={KEY + " ": "top"}), None, "mid", "mid", ["policy default"]),
    ("upper-case key is no label", img(labels={KEY.upper(): "top"}), None, "mid", "mid", ["policy default"]),
]


@pytest.mark.parametrize(("image", "annotations", "tier", "requested", "words"), [a[1:] for a in ALLOWED],
                         ids=[a[0] for a in ALLOWED])
def test_allowed_decisions(policy: dict, image: Image, annotations, tier: str, requested: str, words: list[str]) -> None:
    """The decided tier, what was asked, and a why that names the rule."""
    d = decide(policy, image, annotations)
    assert isinstance(d, Decision)
    assert (d.tier, d.requested) == (tier, requested)
    for w in words:
        assert w in d.why, d.why
    assert d.why.isprintable()
    assert set(d.as_dict()) == {"tier", "requested", "source", "ceiling", "rule", "why"}


def test_request_above_ceiling_is_refused_when_the_rule_says_so(policy: dict) -> None:
    """trust[2] says over_ceiling = refuse: asking for more than `tight` stops the container, naming rule and ceiling."""
    with pytest.raises(Refusal) as info:
        decide(policy, img("registry.example/app:1", {KEY: "mid"}))
    assert str(info.value) == ("'registry.example/app:1' asks for tier mid (label io.tiergate.tier) but may get at most tight "
                               "(trust[2] match 'registry.example/*')")


def test_annotation_above_ceiling_is_refused_like_a_label(policy: dict) -> None:
    """Even where a caller may loosen, an annotation cannot buy what the image's trust rule forbids."""
    with pytest.raises(Refusal, match=r"asks for tier top \(annotation io.tiergate.tier\) but may get at most tight"):
        decide(dict(policy, caller_may_loosen=True), img("registry.example/app:1"), {KEY: "top"})


def test_caller_may_loosen_up_to_the_ceiling(policy: dict) -> None:
    """caller_may_loosen = true: a weaker request than the image's own label is honoured, within the ceiling."""
    loose = dict(policy, caller_may_loosen=True)
    d = decide(loose, img(labels={KEY: "tight"}), {KEY: "mid"})
    assert (d.tier, d.requested, d.source) == ("mid", "mid", f"annotation {KEY}")
    d = decide(loose, img(labels={KEY: "tight"}), {KEY: "top"})
    assert (d.tier, d.requested) == ("mid", "top") and "clamped to mid" in d.why


def test_digest_rules_match_only_the_full_digest(policy: dict) -> None:
    """A digest rule matches the whole id or manifest digest, never an image whose id merely starts alike."""
    assert ceiling_for(policy, img("", id=DIGEST))[0] == "top"
    assert ceiling_for(policy, img("", id=DIGEST[:12] + "0" * 52))[0] == "mid"
    assert ceiling_for(policy, img("", digest=DIGEST[:-1] + "0"))[0] == "mid"


def test_no_label_default_above_ceiling_obeys_ceiling(policy: dict) -> None:
    """Even the default tier is subject to the ceiling (default mid is above tight: refused by trust[2])."""
    with pytest.raises(Refusal):
        decide(policy, img("registry.example/app:1"))


def test_unknown_tier_is_refused_listing_valid_tiers(policy: dict) -> None:
    """An unknown tier name names itself and every valid tier."""
    with pytest.raises(Refusal) as info:
        decide(policy, img(labels={KEY: "gold"}))
    assert str(info.value) == "unknown tier 'gold' asked by label io.tiergate.tier; valid tiers: low, mid, tight, top"


HOSTILE = [
    ("path traversal", "../../etc"),
    ("absolute path", "/etc/shadow"),
    ("newline after a valid name", "mid\n"),
    ("control characters", "mid\x00\x1b[31m\r\n"),
    ("10 kB value", "a" * 10_000),
    ("10 kB of a valid-looking name", "mid" * 3_400),
    ("nft syntax", 'mid; flush ruleset; add rule inet filter input accept'),
    ("shell metacharacters", "$(reboot)`id`;|&>"),
    ("unicode look-alike value", "m\u0456d"),
    ("right-to-left override", "\u202edim"),
    ("empty", ""),
    ("upper case", "MID"),
]


@pytest.mark.parametrize("value", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
@pytest.mark.parametrize("where", ["label", "annotation"])
def test_hostile_tier_values_are_refused_with_a_bounded_printable_line(policy: dict, value: str, where: str) -> None:
    """Hostile values are never a tier: Refusal, one printable ASCII line under 300 characters."""
    image = img(labels={KEY: value}) if where == "label" else img()
    annotations = {KEY: value} if where == "annotation" else None
    with pytest.raises(Refusal) as info:
        decide(policy, image, annotations)
    msg = str(info.value)
    assert msg.startswith("unknown tier ") and msg.endswith("valid tiers: low, mid, tight, top")
    assert len(msg) < 300 and msg.isprintable() and msg.isascii()


def test_thousands_of_labels(policy: dict) -> None:
    """Thousands of unrelated labels do not change the outcome."""
    labels = {f"org.example.l{i}": "x" * 100 for i in range(5000)} | {KEY: "tight"}
    assert decide(policy, img(labels=labels)).tier == "tight"


def test_hostile_image_reference_is_bounded_in_messages(policy: dict) -> None:
    """The image reference in a clamp/refusal message is escaped and cut."""
    ref = "registry.example/" + "\x1b" * 50 + "a" * 10_000
    with pytest.raises(Refusal) as info:
        decide(policy, img(ref, {KEY: "top"}))
    msg = str(info.value)
    assert msg.isprintable() and msg.isascii() and len(msg) < 600  # show() keeps 64 characters, escaped


def test_unknown_image_refused_by_default(policy: dict) -> None:
    """on_unknown_image = refuse: the problem is in the one-line reason."""
    with pytest.raises(Refusal) as info:
        decide(policy, Image.unknown("images.json is not valid JSON"))
    assert str(info.value) == ("cannot read the image's labels (images.json is not valid JSON); "
                               "the policy refuses unknown images")


def test_unknown_image_gets_the_fallback_tier_when_configured(policy: dict) -> None:
    """on_unknown_image = <tier>: the container runs under that tier; the why says the image was unknown."""
    fallback = dict(policy, on_unknown_image="tight")
    d = decide(fallback, Image.unknown("no container uses layer 0123"))
    assert d.tier == "tight" and "unknown image (no container uses layer 0123)" in d.why


def test_unknown_image_ignores_its_labels_and_annotations(policy: dict) -> None:
    """An unknown image's fallback is not overridden by an annotation asking for more."""
    fallback = dict(policy, on_unknown_image="tight")
    assert decide(fallback, Image.unknown("x"), {KEY: "top"}).tier == "tight"


def test_shipped_policy_decisions() -> None:
    """Shipped policy: unlabelled -> baseline; privileged clamped for every image, whatever its name;
    a caller's annotation may tighten a tier, never loosen it."""
    p = shipped_policy()
    assert decide(p, img()).tier == "baseline"
    assert decide(p, img(labels={KEY: "restricted"})).tier == "restricted"
    assert decide(p, img(labels={KEY: "privileged"})).tier == "baseline"
    assert decide(p, img("localhost/tiergate-probe:1", {KEY: "privileged"})).tier == "baseline"
    assert decide(p, pulled("localhost/tiergate-probe:1", {KEY: "privileged"})).tier == "baseline"
    assert decide(p, img(labels={KEY: "restricted"}), {KEY: "baseline"}).tier == "restricted"
    assert decide(p, img(labels={KEY: "restricted"}), {KEY: "isolated"}).tier == "isolated"
    assert not p["caller_may_loosen"]


def test_ceiling_for_reports_the_rule(policy: dict) -> None:
    """ceiling_for returns (tier, action, rule) of the first match, else the default ceiling."""
    assert ceiling_for(policy, img("registry.example/app:1")) == ("tight", "refuse", "trust[2] match 'registry.example/*'")
    assert ceiling_for(policy, pulled("registry.example/infra/x:1"))[2] == "trust[1] match 'registry.example/infra/*'"
    assert ceiling_for(policy, img("registry.example/infra/x:1"))[2] == "trust[2] match 'registry.example/*'"
    assert ceiling_for(policy, img("quay.io/x:1")) == ("mid", "clamp", "default ceiling")
    assert ceiling_for(policy, img("", id="cd" * 32)) == ("mid", "clamp", "default ceiling")


def test_image_normalises_ids() -> None:
    """Image strips sha256: from id and digest; unknown images carry their problem."""
    i = Image(refs=("a",), id="sha256:" + DIGEST, digest="sha256:" + DIGEST)
    assert i.id == DIGEST and i.digest == DIGEST and i.known
    u = Image.unknown("why")
    assert not u.known and u.problem == "why" and u.refs == []


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "'plain'"),
    ("a\nb", "'a\\\\x0ab'"),
    ("\u0456", "'?'"),
    ("x" * 100, "'" + "x" * 64 + "...'"),
])
def test_show_makes_untrusted_text_printable_and_bounded(value: str, expected: str) -> None:
    """show() escapes control bytes, replaces non-Latin-1, cuts at 64 characters."""
    assert show(value) == expected
