#!/usr/bin/env bash
# Create the side virtualenv with real MXNet 1.9.1 (tests only; kiln itself never imports mxnet).
# Idempotent: does nothing when the venv exists and imports mxnet. Usage: tests/mxnet/make_venv.sh [VENV]
# MXNet 1.9.1 needs numpy<1.24 (it uses np.bool) and the Debian package libgomp1 at run time.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-mxnet}"
python="${PYTHON:-python3.11}"

if "$venv/bin/python" -c "import mxnet" 2>/dev/null; then
    exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "mxnet==1.9.1" "numpy>=1.23,<1.24" "scikit-learn>=1.2,<1.4"
"$venv/bin/python" -c "import mxnet, numpy; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)"
