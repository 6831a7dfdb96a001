"""The compiled policy on disk: a small head, one file per tier, an index of trust rules.

A start reads the head (the policy's settings, every tier's strictness, where
the rest lives), then only the tier files it uses and the index lines for the
image at hand, so its cost does not grow with the number of tiers or rules.
What load_compiled returns is a dict of the head whose "tiers" holds a lazy
Mapping per tier and whose "trust" is a lazy Sequence with `candidates(image)`
(see docs/contracts.md). A generation directory is written whole, then the head
that names it is renamed into place: a start sees one generation, never half.

Trust index: one line per key (`"key"<TAB>[[index, rule], ...]`) in one of
trust-<n>.idx (n = crc32(key) mod the head's trust_buckets, ~16 rules a file).
A rule is filed under a key; a name rule under its pattern's
literal prefix up to the last '/', ':' or '@' before its first wildcard (the
whole pattern when it has none), a digest rule under '@' + digest. An image's
names can only match rules filed under one of their own prefixes cut at those
characters (or the empty key), so the lines for those keys hold every rule that
may match: decide still judges each one, in policy order. Standard library only.
"""

from __future__ import annotations

import os

# The ABCs behind collections.abc, already loaded by os: importing collections costs ~12 ms.
from _collections_abc import Mapping, Sequence

from tiergate.core.errors import PolicyError
from tiergate.oci.errors import OciError
from tiergate.oci.jsonio import dumps, parse

_SEPARATORS = "/:@"
HEAD_ONLY = ("gen", "strictness", "trust_count", "first_name_rule", "trust_buckets")
RULES_PER_BUCKET = 16  # index lines are spread over trust-<n>.idx files by a hash of their key


def bucket_file(key: str, buckets: int) -> str:
    import binascii  # here: an exec, and a start with no image names, read no index (~0.3 M instructions)

    return f"trust-{binascii.crc32(key.encode('utf-8', 'surrogatepass')) % buckets}.idx"


def pattern_key(pattern: str) -> str:
    """The index key of a name rule: its literal prefix cut at the last separator."""
    wild = [i for i in (pattern.find("*"), pattern.find("?")) if i >= 0]
    if not wild:
        return pattern
    literal = pattern[:min(wild)]
    cut = max(literal.rfind(c) for c in _SEPARATORS)
    return literal[:cut] if cut > 0 else ""


def name_keys(name: str) -> list[str]:
    """Every key under which a rule that may match NAME is filed."""
    return ["", name, *(name[:i] for i, c in enumerate(name) if i and c in _SEPARATORS)]


def _needle(key: str) -> bytes:
    return b"\n" + dumps(key, ascii=True) + b"\t"  # ascii: no raw tab or newline inside a key


def split(compiled: dict, gen: str) -> tuple[dict, dict[str, bytes]]:
    """(head, {file name: content}) of a compiled policy stored in generation directory GEN."""
    tiers, trust = compiled["tiers"], compiled["trust"]
    head = {k: v for k, v in compiled.items() if k not in ("tiers", "trust")}
    buckets = 1
    while buckets * RULES_PER_BUCKET < len(trust):
        buckets *= 2
    head.update(gen=gen, strictness={name: t["strictness"] for name, t in tiers.items()}, trust_count=len(trust),
                first_name_rule=next((i for i, rule in enumerate(trust) if not rule["digest"]), None),
                trust_buckets=buckets)
    files = {f"{name}.json": dumps(tier) for name, tier in tiers.items()}
    lines: dict[str, list] = {}
    for i, rule in enumerate(trust):
        key = "@" + rule["digest"] if rule["digest"] else pattern_key(rule["match"])
        lines.setdefault(key, []).append([i, rule])
    for n in range(buckets):
        files[f"trust-{n}.idx"] = b""
    for key, rules in lines.items():
        files[bucket_file(key, buckets)] += _needle(key) + dumps(rules)
    return head, {name: data + b"\n" if name.endswith(".idx") else data for name, data in files.items()}


def view(head: dict, cache_dir: str, unsafe, entry: str) -> dict:
    """The caller-facing policy: the head (read from ENTRY), "tiers" {name: lazy tier}, "trust"."""
    store = _Generation(os.path.join(cache_dir, head["gen"]), unsafe, entry)
    policy = {k: v for k, v in head.items() if k not in HEAD_ONLY}
    policy["generation"] = head["gen"]  # new with every compile: what the seccomp memo is keyed on
    policy["tiers"] = {name: Tier(store, name, n) for name, n in head["strictness"].items()}
    policy["trust"] = Trust(store, head["trust_count"], head["first_name_rule"], head["trust_buckets"])
    return policy


def valid_head(head: dict) -> bool:
    gen, strictness = head.get("gen"), head.get("strictness")
    return (isinstance(gen, str) and gen.endswith(".d") and "/" not in gen and not gen.startswith(".")
            and isinstance(strictness, dict) and isinstance(head.get("trust_count"), int)
            and isinstance(head.get("trust_buckets"), int) and head["trust_buckets"] > 0)


class _Generation:
    """One generation directory: files read on first use, each checked like the head."""

    __slots__ = ("path", "unsafe", "checked", "entry")

    def __init__(self, path: str, unsafe, entry: str) -> None:
        self.path, self.unsafe, self.checked, self.entry = path, unsafe, False, entry

    def damaged(self, path: str) -> PolicyError:
        """A file of this generation is missing or corrupt: drop the head so the next start compiles."""
        try:
            os.unlink(self.entry)
        except OSError:
            pass
        return PolicyError("the compiled policy cache is damaged; the next start compiles the policy again", path)

    def read(self, name: str) -> bytes:
        path = os.path.join(self.path, name)
        try:
            if not self.checked:
                problem = self.unsafe(os.stat(self.path), "compiled policy cache directory", self.path)
                if problem:
                    raise PolicyError(problem, self.path)
                self.checked = True
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
                problem = self.unsafe(os.fstat(fh.fileno()), "compiled policy cache", path)
                if problem:
                    raise PolicyError(problem, path)
                return fh.read()
        except FileNotFoundError:
            raise self.damaged(path) from None
        except OSError as exc:
            raise PolicyError(f"cannot read the compiled policy: {exc.strerror}", path) from None

    def parse(self, name: str, data: bytes | None = None) -> object:
        try:
            return parse((self.read(name) if data is None else data).decode("utf-8"), "compiled policy")
        except (OciError, UnicodeDecodeError):
            raise self.damaged(os.path.join(self.path, name)) from None


class Tier(Mapping):
    """A compiled tier: name and strictness from the head, the rest read from its file on first use."""

    __slots__ = ("_store", "_name", "_strictness", "_doc")

    def __init__(self, store: _Generation, name: str, strictness: int) -> None:
        self._store, self._name, self._strictness = store, name, strictness
        self._doc: dict | None = None

    def _load(self) -> dict:
        if self._doc is None:
            doc = self._store.parse(f"{self._name}.json")
            if not isinstance(doc, dict) or doc.get("name") != self._name:
                raise self._store.damaged(os.path.join(self._store.path, f"{self._name}.json"))
            self._doc = doc
        return self._doc

    def __getitem__(self, key: str):
        if key == "strictness":
            return self._strictness
        if key == "name":
            return self._name
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"Tier({self._name!r})"


class Trust(Sequence):
    """The trust rules in policy order; candidates(image) reads only the index lines its names and
    digests need."""

    __slots__ = ("_store", "_count", "_first_name", "_buckets", "_files", "_all")

    def __init__(self, store: _Generation, count: int, first_name: int | None, buckets: int) -> None:
        self._store, self._count, self._first_name, self._buckets = store, count, first_name, buckets
        self._files: dict[str, bytes] = {}
        self._all: list | None = None

    def _file(self, name: str) -> bytes:
        if name not in self._files:
            self._files[name] = self._store.read(name) if self._count else b"\n"
        return self._files[name]

    def _lookup(self, keys, found: dict) -> None:
        for key in dict.fromkeys(keys):
            name = bucket_file(key, self._buckets)
            data, needle = self._file(name), _needle(key)
            at = data.find(needle)
            if at >= 0:
                start = at + len(needle)
                self._add(name, data[start:data.find(b"\n", start)], found)

    def _add(self, name: str, line: bytes, found: dict) -> None:
        rules = self._store.parse(name, line)
        try:
            if not isinstance(rules, list):
                raise TypeError
            found.update((i, rule) for i, rule in rules)
        except (TypeError, ValueError):
            raise self._store.damaged(os.path.join(self._store.path, name)) from None

    def candidates(self, image):
        """(index, rule) in policy order: every rule that may match IMAGE (a superset). Its pulled
        names are read only when a name rule is reached, as a walk over all rules would."""
        found: dict = {}
        self._lookup(["@" + d for d in (image.id, image.digest) if d]
                     + [k for name in image.refs for k in name_keys(name)], found)
        order, n, first_name = sorted(found), 0, self._first_name
        while True:
            if first_name is not None and (n == len(order) or order[n] >= first_name):
                self._lookup([k for name in image.pulled for k in name_keys(name)], found)
                order, first_name = sorted(found), None  # what was added lies at or after first_name
                continue
            if n == len(order):
                return
            yield order[n], found[order[n]]
            n += 1

    def _rules(self) -> list:
        if self._all is None:
            found: dict = {}
            for n in range(self._buckets if self._count else 0):
                name = f"trust-{n}.idx"
                for line in self._file(name).split(b"\n"):
                    if line:
                        self._add(name, line.partition(b"\t")[2], found)
            self._all = [found[i] for i in sorted(found)]
        return self._all

    def __getitem__(self, i):
        return self._rules()[i]

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iter(self._rules())

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, tuple, Trust)) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Trust({self._count} rules)"
