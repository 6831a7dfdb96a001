#!/usr/bin/env bash
# THE main job, as root: bash integration/demo.sh
# Installs what it needs (setup.sh), then shows tiers enforced on real podman containers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash integration/setup.sh >/dev/null
exec .venv/bin/python integration/demo.py
