#!/usr/bin/env bash
# THE test command, as root: bash integration/run-tests.sh [pytest args...]
# Runs setup.sh (packages + .venv), the static checks (ruff, mypy: a few
# seconds, configured in pyproject.toml; either failing stops the run with one
# line), then the unit tests (tests/) and the integration tests (integration/)
# in one pytest run; exits with pytest's code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash integration/setup.sh

check() {  # check NAME CMD...: run a static check; on failure its findings, then one line
  echo "run-tests: ${*:2}"
  "${@:2}" || { echo "run-tests: $1 failed: fix the findings above (${*:2})" >&2; exit 1; }
}
check ruff .venv/bin/ruff check --quiet --output-format concise
check mypy .venv/bin/mypy

# As root, setup.sh has just installed every engine: a missing one is a
# failure, not a skip (harness.require_binary honours this).
if [ "$(id -u)" -eq 0 ]; then
  export TIERGATE_IT_STRICT=1
fi

echo "run-tests: .venv/bin/python -m pytest tests integration -q -rs $*"
exec .venv/bin/python -m pytest tests integration -q -rs "$@"
