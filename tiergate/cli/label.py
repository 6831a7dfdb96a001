"""`tiergate label IMAGE TIER`: a copy of a local image carrying the tier label, made with the engine at hand.

podman: `podman build --pull=never` of a two-line Containerfile (FROM IMAGE,
LABEL key=TIER) in a temporary directory: offline, and the base image's
config (CMD, ENV, EXPOSE, other labels) is kept. docker: `docker create` +
`docker commit --change 'LABEL key=TIER'` + `docker rm`, which needs neither
a builder (BuildKit) nor a registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from tiergate.core.errors import TiergateError

EXAMPLES = """examples:
  tiergate label localhost/myapp:1.0 restricted               # relabels localhost/myapp:1.0 in place
  tiergate label localhost/myapp:1.0 isolated --tag localhost/myapp:1.0-isolated
  tiergate label myapp:1.0 baseline --engine docker

the same by hand, in the image's own Containerfile / Dockerfile:
  FROM docker.io/library/nginx:1.27
  LABEL io.tiergate.tier=restricted
"""

TIMEOUT = 300


def register(sub) -> None:
    import argparse

    c = sub.add_parser("label", help="make a copy of an image that carries the tier label",
                       description="Make a labelled image (LABEL <label_key>=TIER, label_key from the policy) from a "
                       "local IMAGE with podman or docker, offline. TIER is checked against the policy first, and "
                       "the tier the hook will actually grant (trust rules may cap it) is printed.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("image", metavar="IMAGE", help="a local image (name or id)")
    c.add_argument("tier", metavar="TIER", help="a tier of the active policy")
    c.add_argument("--tag", metavar="NEW", help="name of the labelled image (default: IMAGE itself, retagged)")
    c.add_argument("--engine", choices=["podman", "docker"], help="engine to use (default: podman if found, else docker)")
    c.set_defaults(func=cmd_label)


def pick_engine(wanted: str | None, which=shutil.which) -> str:
    for name in ([wanted] if wanted else ["podman", "docker"]):
        path = which(name)
        if path:
            return path
    raise TiergateError(f"{wanted or 'podman or docker'} not found on PATH")


def containerfile(image: str, key: str, tier: str) -> str:
    return f"FROM {image}\nLABEL {json.dumps(key)}={json.dumps(tier)}\n"


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TiergateError(f"{what} timed out after {TIMEOUT}s") from None
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise TiergateError(f"{what} failed: {err}")
    return proc.stdout


def label_podman(engine: str, image: str, new: str, key: str, tier: str) -> str:
    with tempfile.TemporaryDirectory(prefix="tiergate-label-") as ctx:
        with open(os.path.join(ctx, "Containerfile"), "w", encoding="utf-8") as fh:
            fh.write(containerfile(image, key, tier))
        out = _run([engine, "build", "--pull=never", "--quiet", "--format", "docker", "-t", new,
                    "-f", os.path.join(ctx, "Containerfile"), ctx], "podman build")
    return out.strip().splitlines()[-1] if out.strip() else ""


def label_docker(engine: str, image: str, new: str, key: str, tier: str) -> str:
    cid = _run([engine, "create", image, "/tiergate-label-placeholder"], "docker create").strip().splitlines()[-1]
    try:
        out = _run([engine, "commit", "--change", f"LABEL {json.dumps(key)}={json.dumps(tier)}", cid, new],
                   "docker commit")
    finally:
        subprocess.run([engine, "rm", "--force", cid], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return out.strip().splitlines()[-1] if out.strip() else ""


def image_labels(engine: str, ref: str) -> dict:
    out = _run([engine, "image", "inspect", ref], "image inspect")
    doc = json.loads(out)[0]
    return (doc.get("Config") or {}).get("Labels") or doc.get("Labels") or {}


def cmd_label(args) -> int:
    from tiergate.core.decide import Image, decide
    from tiergate.core.errors import Refusal
    from tiergate.policy.cache import load_compiled

    policy = load_compiled(args.policy)
    if args.tier not in policy["tiers"]:
        raise TiergateError(f"unknown tier {args.tier!r}; valid tiers: {', '.join(sorted(policy['tiers']))}")
    new = args.tag or args.image
    engine = pick_engine(args.engine)
    key = policy["label_key"]
    make = label_docker if os.path.basename(engine) == "docker" else label_podman
    image_id = make(engine, args.image, new, key, args.tier)
    got = image_labels(engine, new).get(key)
    if got != args.tier:
        raise TiergateError(f"{new}: label {key} is {got!r} after labelling, expected {args.tier!r}")
    print(f"{new}: {key}={args.tier}" + (f" (image {image_id.removeprefix('sha256:')[:12]})" if image_id else ""))
    try:
        d = decide(policy, Image(refs=[new if ":" in new.rsplit("/", 1)[-1] else new + ":latest"],
                                 labels={key: args.tier}), {})
        if d.tier != args.tier:
            print(f"note: trust rules cap this image: the hook will grant {d.tier} ({d.why})", file=sys.stderr)
    except Refusal as exc:
        print(f"note: the hook will refuse this image as named: {exc}", file=sys.stderr)
    return 0
