"""tiergate.sources.storage finds one container and one image without parsing the others: the same
answers as parsing everything (any names, ids and shapes), at a cost that does not grow with storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import blob_name
from tiergate.oci.errors import OciError
from tiergate.sources import storage

LAYERS = [f"{i:x}" * 64 for i in range(1, 5)]
LAYERS = [layer[:64] for layer in LAYERS]


def go_json(value) -> bytes:
    """What containers-storage writes: compact JSON (Go's encoding/json)."""
    return json.dumps(value, separators=(",", ":")).encode()


def oracle(path: Path, key: str, value: str):
    """The answer of parsing the whole file: the first object whose KEY is VALUE; ValueError when invalid."""
    doc = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(doc, list):
        raise ValueError("not an array")
    return next((e for e in doc if isinstance(e, dict) and e.get(key) == value), None)


def lookup(path: Path, key: str, value: str):
    storage._LAST.clear()
    try:
        return storage._find(str(path), "metadata", key, value)
    except OciError:
        return ValueError


def expected(path: Path, key: str, value: str):
    try:
        return oracle(path, key, value)
    except ValueError:
        return ValueError


def container(i: int, layer: str, **extra) -> dict:
    return {"id": f"{i:064x}", "names": [f"c{i}"], "image": f"{i + 7:064x}", "layer": layer,
            "metadata": json.dumps({"image-name": f"registry.example/app-{i}:1", "name": f"c{i}"}),
            "created": "2026-11-29T12:00:00Z", "flags": {"MountLabel": "", "ProcessLabel": ""}, **extra}


def image(i: int, **extra) -> dict:
    return {"id": f"{i:064x}", "digest": f"sha256:d{i:063x}", "names": [f"registry.example/app-{i}:1"],
            "layer": f"c{i:063x}", "metadata": "{}", "created": "2026-11-29T12:00:00Z", **extra}


# -- the same answers ---------------------------------------------------------------------------

ADVERSARIAL = [
    '"layer":"{L}"', '},{"id":"{L}"', '{"id":"{I}"', '"', '\\', '\\"layer\\":\\"{L}\\"', "]", "[{", "\u2028",
]


def _names(text: str, layer: str, image_id: str) -> str:
    return text.replace("{L}", layer).replace("{I}", image_id)


def _entries_strategy():
    value = st.one_of(st.sampled_from(ADVERSARIAL), st.text(alphabet='ab"\\{},:[]', max_size=6))
    entry = st.fixed_dictionaries(
        {"id": st.sampled_from([f"{i:064x}" for i in range(3)]), "layer": st.sampled_from(LAYERS)},
        optional={"names": st.lists(value, max_size=2), "metadata": value,
                  # nested objects as storage writes them: none starts with "id" (see storage.py)
                  "flags": st.fixed_dictionaries({"MountLabel": value},
                                                 optional={"layer": st.sampled_from(LAYERS),
                                                           "id": st.sampled_from(LAYERS)})})
    return st.lists(st.one_of(entry, st.just("x"), st.just({"layer": LAYERS[0]})), max_size=6)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_entries_strategy(), reorder=st.booleans(), spaced=st.booleans(), dup=st.booleans())
def test_any_entries_give_the_answer_of_a_full_parse(tmp_path: Path, entries, reorder: bool, spaced: bool,
                                                     dup: bool) -> None:
    """Quotes, backslashes and the searched bytes in names and metadata, lookalike keys in nested
    objects, keys out of order, duplicate keys, non-objects, other spacing: whatever the file says,
    the answer is what parsing all of it says (the one assumption: no nested object starts with
    "id", which containers-storage never writes)."""
    docs = []
    for e in entries:
        if isinstance(e, dict):
            e = {k: _names(v, LAYERS[0], LAYERS[1]) if isinstance(v, str) else
                 [_names(n, LAYERS[0], LAYERS[1]) for n in v] if isinstance(v, list) else v for k, v in e.items()}
            if reorder:
                e = dict(reversed(list(e.items())))
        docs.append(e)
    text = json.dumps(docs, separators=(", ", ": ") if spaced else (",", ":"))
    if dup and '"layer":"' in text:
        text = text.replace('"layer":"', f'"layer":"{LAYERS[3]}","layer":"', 1)
    path = tmp_path / "metadata.json"
    path.write_text(text)
    for value in LAYERS:
        assert lookup(path, "layer", value) == expected(path, "layer", value)
    for value in (f"{0:064x}", f"{2:064x}", LAYERS[1]):
        assert lookup(path, "id", value) == expected(path, "id", value)


@pytest.mark.parametrize("cut", [1, 2, 40, -1])
def test_a_truncated_file_is_an_error_as_before(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "containers.json"
    full = go_json([container(i, LAYERS[i % 2]) for i in range(4)])
    path.write_bytes(full[:-cut] if cut > 0 else full + b"x")
    assert lookup(path, "layer", LAYERS[0]) is ValueError


# -- cost: what one start parses does not grow with storage --------------------------------------

def _storage(graph: Path, n: int) -> str:
    """n containers and n images (compact, as podman writes them); the container asked for is the last,
    the others carry quotes, backslashes and entry boundaries in their names and metadata."""
    layer = "e" * 64
    odd = ['x"y', '\\"', '},{"id":"' + "f" * 64 + '"', '"layer":"' + "d" * 64 + '"']
    containers = [container(i, f"{i:064x}", names=[odd[i % 4]], metadata=odd[(i + 1) % 4]) for i in range(n - 1)]
    containers.append(container(n, layer))
    images = [image(i) for i in range(n + 8)]
    (graph / "overlay-containers").mkdir(parents=True)
    (graph / "overlay-containers" / "containers.json").write_bytes(go_json(containers))
    (graph / "overlay-images" / f"{n + 7:064x}").mkdir(parents=True)
    (graph / "overlay-images" / "images.json").write_bytes(go_json(images))
    blob = graph / "overlay-images" / f"{n + 7:064x}" / blob_name(f"{n + 7:064x}")
    blob.write_bytes(go_json({"config": {"Labels": {"io.tiergate.tier": "web"}}}))
    return str(graph / "overlay" / layer / "merged")


@pytest.mark.parametrize("n", [1000, 10000])
def test_a_start_parses_as_many_bytes_with_n_entries_as_with_10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                n: int) -> None:
    parsed: list[int] = []
    real = storage.parse

    def counting(text, *a, **kw):
        parsed.append(len(text))
        return real(text, *a, **kw)

    monkeypatch.setattr(storage, "parse", counting)
    results = []
    for size in (10, n):
        root = _storage(tmp_path / str(size), size)
        parsed.clear()
        storage._LAST.clear()
        img, entry = storage.image_for_rootfs(root), storage.container_for_rootfs(root)
        results.append((len(parsed), sum(parsed)))
        assert img.labels == {"io.tiergate.tier": "web"} and img.id == f"{size + 7:064x}"
        assert img.refs == [f"registry.example/app-{size}:1"] and entry["id"] == f"{size:064x}"
    (calls_small, bytes_small), (calls_big, bytes_big) = results
    assert calls_big == calls_small
    assert abs(bytes_big - bytes_small) < 64, results


def test_the_files_are_searched_mapped_and_unmapped_after(tmp_path):
    """A start searches containers.json and images.json where they lie (a read-only mapping, not a
    copy into a fresh child's memory) and keeps neither the mapping nor its descriptor."""
    import os

    path = tmp_path / "containers.json"
    path.write_bytes(go_json([container(i, f"{i:064x}") for i in range(1, 200)]))
    fds = len(os.listdir("/proc/self/fd"))
    assert lookup(path, "layer", f"{150:064x}") == expected(path, "layer", f"{150:064x}")
    assert lookup(path, "layer", "9" * 64) is None
    assert str(path) not in Path("/proc/self/maps").read_text()
    assert len(os.listdir("/proc/self/fd")) == fds
    mapped = storage._mapped(str(path), "metadata")
    try:
        assert not isinstance(mapped, bytes) and str(path) in Path("/proc/self/maps").read_text()
    finally:
        mapped.close()
    (tmp_path / "empty.json").write_bytes(b"")
    assert lookup(tmp_path / "empty.json", "layer", LAYERS[0]) is ValueError
