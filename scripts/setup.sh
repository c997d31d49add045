#!/usr/bin/env bash
# Create .venv (if missing) and install nnunet-fm with its test extra. Idempotent.
#   PYTHON=python3.12 bash scripts/setup.sh   the interpreter that creates .venv (default: python3; >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup.sh: error: '$PYTHON' not found; install Python >= 3.10 or name one with PYTHON=/path/to/python3.X" >&2
    exit 2
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    found="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)"
    echo "setup.sh: error: nnunet-fm needs Python >= 3.10, but $PYTHON is $found; name a newer one with" \
      "PYTHON=python3.X bash scripts/setup.sh" >&2
    exit 2
  fi
  if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    echo "setup.sh: error: $PYTHON has no working venv module; on Debian/Ubuntu install it with" \
      "'sudo apt install python3-venv' (or python$version-venv), then run this again" >&2
    exit 2
  fi
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
