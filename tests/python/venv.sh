#!/usr/bin/env bash
# Makes (once per machine and requirements file) the Python venv the test suites run in and
# prints its path: outside the clone, like the built tools, keyed by tests/python/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}/venv/$(sha256sum tests/python/requirements.txt | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt >&2
    touch "$venv/.complete"
fi
echo "$venv"
