#!/usr/bin/env bash
# Create .venv-olah with olah==0.5.4: the local Hub-compatible server that the Hub tests start.
# olah pins its own dependencies (fastapi, httpx, ...), so it gets its own venv and never touches
# the project's. Idempotent: a venv whose olah-cli already reports 0.5.4 is left alone.
set -euo pipefail

OLAH_VERSION="0.5.4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OLAH_VENV:-$ROOT/.venv-olah}"
PYTHON="${PYTHON:-python3}"

if ! command -v git >/dev/null 2>&1; then
    echo "install_olah: olah's mirror mode needs the 'git' binary on PATH" >&2
    exit 1
fi

installed_version() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("olah"))
PY
}

if [ -x "$VENV/bin/olah-cli" ] && [ "$(installed_version)" = "$OLAH_VERSION" ]; then
    echo "install_olah: olah $OLAH_VERSION already in $VENV"
    exit 0
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "olah==$OLAH_VERSION"
if [ "$(installed_version)" != "$OLAH_VERSION" ] || [ ! -x "$VENV/bin/olah-cli" ]; then
    echo "install_olah: olah $OLAH_VERSION did not install into $VENV" >&2
    exit 1
fi
echo "install_olah: installed olah $OLAH_VERSION into $VENV"
