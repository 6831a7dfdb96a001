"""Labels + image reference + policy -> the tier a container gets, and why. Pure."""

from __future__ import annotations

from tiergate.core import glob
from tiergate.core.errors import Refusal
from tiergate.core.names import valid_tier_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any


def show(value: object, limit: int = 64) -> str:
    """An untrusted string made safe for one log/error line: printable ASCII, bounded."""
    text = str(value)
    cut = len(text) > limit
    text = "".join(c if " " <= c <= "~" else (f"\\x{ord(c):02x}" if ord(c) < 256 else "?") for c in text[:limit])
    return repr(text + ("..." if cut else ""))


class Image:
    """What tiergate knows about a container's image (plain data from a source).

    refs: names the image goes by (anyone who can tag may add one: shown, and matched
    only by trust rules that cannot lift the ceiling); pulled: names the engine recorded
    from a registry pull together with the image's digest (what a lifting name rule
    needs); labels: the image's own labels (its config, never the caller's);
    container_labels: labels the caller set on the container (docker --label).
    Under Kubernetes (containerd's CRI records) also the pod's namespace and
    whether this is the pod's sandbox (pause) container, which has no image of
    its own to ask for a tier.
    """

    __slots__ = ("refs", "_pulled", "id", "digest", "labels", "container_labels", "exposed", "known", "problem",
                 "namespace", "sandbox")

    def __init__(self, refs: Iterable[str] = (), id: str = "", labels: Mapping[str, str] | None = None,
                 exposed: Iterable[str] = (), known: bool = True, problem: str = "", digest: str = "",
                 namespace: str = "", sandbox: bool = False,
                 pulled: Iterable[str] | Callable[[], Iterable[str]] = (),
                 container_labels: Mapping[str, str] | None = None) -> None:
        self.refs = list(refs)
        self._pulled: list[str] | Callable[[], Iterable[str]] = pulled if callable(pulled) else list(pulled)  # a callable: read only when a rule asks
        self.id = id.removeprefix("sha256:") if id else ""
        self.digest = digest.removeprefix("sha256:") if digest else ""
        self.labels = dict(labels or {})
        self.container_labels = dict(container_labels or {})
        self.exposed = list(exposed)
        self.known = known
        self.problem = problem
        self.namespace = namespace
        self.sandbox = sandbox

    @property
    def pulled(self) -> list[str]:
        if callable(self._pulled):
            self._pulled = list(self._pulled())
        return self._pulled

    @classmethod
    def unknown(cls, problem: str) -> Image:
        return cls(known=False, problem=problem)


class Decision:
    __slots__ = ("tier", "requested", "source", "ceiling", "rule", "why")

    def __init__(self, tier: str, requested: str, source: str, ceiling: str, rule: str, why: str) -> None:
        self.tier, self.requested, self.source = tier, requested, source
        self.ceiling, self.rule, self.why = ceiling, rule, why

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def ceiling_for(policy: dict[str, Any], image: Image) -> tuple[str, str, str]:
    """(max tier, over-ceiling action, rule description): the pod namespace's rule, else the first matching trust rule.

    A digest rule matches the full image id or manifest digest. A name rule that would
    lift the ceiling above default_ceiling matches only names the engine recorded from a
    registry pull (image.pulled); one that does not lift may match any name (it only tightens).
    """
    ns_rule = (policy.get("namespaces") or {}).get(image.namespace) if image.namespace else None
    if ns_rule and ns_rule.get("max_tier"):
        return ns_rule["max_tier"], ns_rule.get("over_ceiling") or policy["over_ceiling"], f"namespace {image.namespace}"
    tiers = policy["tiers"]
    floor = tiers[policy["default_ceiling"]]["strictness"]
    trust = policy["trust"]
    # The cached policy's rules come with an index: only those that may match, still in order.
    for i, rule in trust.candidates(image) if hasattr(trust, "candidates") else enumerate(trust):
        if rule["digest"]:
            if rule["digest"] in (image.id, image.digest):
                return rule["max_tier"], rule["over_ceiling"], f"trust[{i}] digest {rule['digest'][:12]}"
            continue
        names = image.pulled if tiers[rule["max_tier"]]["strictness"] < floor else image.refs + image.pulled
        if any(glob.match(rule["match"], ref) for ref in names):
            return rule["max_tier"], rule["over_ceiling"], f"trust[{i}] match {rule['match']!r}"
    return policy["default_ceiling"], policy["over_ceiling"], "default ceiling"


def caller_request(policy: dict[str, Any], image: Image, annotations: dict[str, Any]) -> tuple[str, str] | None:
    """(tier, source) the caller asked for: a spec annotation, else a container label that is
    not the image's own (docker merges `--label` into the image's labels)."""
    key = policy["label_key"]
    if isinstance(annotations.get(key), str):
        return annotations[key], f"annotation {key}"
    asked = image.container_labels.get(key)
    if isinstance(asked, str) and asked != image.labels.get(key):
        return asked, f"container label {key}"
    return None


def decide(policy: dict[str, Any], image: Image, annotations: dict[str, Any] | None = None) -> Decision:
    """Choose the tier. Raises Refusal when the policy says this container must not start."""
    tiers = policy["tiers"]
    key = policy["label_key"]
    annotations = annotations or {}
    if not image.known:
        fallback = policy["on_unknown_image"]
        if fallback == "refuse":
            raise Refusal(f"cannot read the image's labels ({image.problem}); the policy refuses unknown images")
        requested, source = fallback, f"unknown image ({image.problem})"
    elif image.sandbox and policy.get("sandbox_tier"):
        requested, source = policy["sandbox_tier"], "policy sandbox_tier (the pod's sandbox)"
    elif isinstance(image.labels.get(key), str):
        requested, source = image.labels[key], f"label {key}"
    else:
        requested, source = policy["default_tier"], "policy default (no tier label)"
    if not valid_tier_name(requested) or requested not in tiers:
        raise Refusal(f"unknown tier {show(requested)} asked by {source}; valid tiers: {', '.join(sorted(tiers))}")
    # A caller's request (annotation, docker --label, a pod annotation) may tighten, never loosen,
    # unless the policy says caller_may_loosen or the pod's namespace has a ceiling of its own (who
    # may create pods there is the trust); a sandbox with sandbox_tier has its tier.
    asked = None if image.sandbox and policy.get("sandbox_tier") else caller_request(policy, image, annotations)
    ns_rule = (policy.get("namespaces") or {}).get(image.namespace) if image.namespace else None
    may_loosen = policy.get("caller_may_loosen") or bool(ns_rule and ns_rule.get("max_tier"))
    if asked is not None and asked[0] != requested:
        tier, where = asked
        if not valid_tier_name(tier) or tier not in tiers:
            raise Refusal(f"unknown tier {show(tier)} asked by {where}; valid tiers: {', '.join(sorted(tiers))}")
        if tiers[tier]["strictness"] > tiers[requested]["strictness"] or may_loosen:
            requested, source = tier, where
        else:
            source = f"{source} (the caller's {where} asks for weaker {tier}: a caller may only tighten)"

    ceiling, action, rule = ceiling_for(policy, image)
    ref = show(image.refs[0] if image.refs else image.id[:12] or ("pod sandbox" if image.sandbox else "unknown image"))
    if tiers[requested]["strictness"] >= tiers[ceiling]["strictness"]:
        why = f"{source} asks for {requested}; {ref} may be no more privileged than {ceiling} ({rule})"
        return _floor(policy, image, Decision(requested, requested, source, ceiling, rule, why))
    if action == "refuse":
        raise Refusal(f"{ref} asks for tier {requested} ({source}) but may get at most {ceiling} ({rule})")
    why = f"{source} asks for {requested}, clamped to {ceiling}: {ref} may get at most {ceiling} ({rule})"
    return _floor(policy, image, Decision(ceiling, requested, source, ceiling, rule, why))


def _floor(policy: dict[str, Any], image: Image, decision: Decision) -> Decision:
    """A pod namespace's min_tier: nothing in it runs less strictly (kube-system may differ from shop)."""
    ns_rule = (policy.get("namespaces") or {}).get(image.namespace) if image.namespace else None
    floor = ns_rule.get("min_tier") if ns_rule else None
    tiers = policy["tiers"]
    if floor and tiers[decision.tier]["strictness"] < tiers[floor]["strictness"]:
        decision.why += f"; raised to {floor}, the floor of namespace {image.namespace}"
        decision.tier = floor
    return decision
