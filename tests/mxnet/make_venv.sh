#!/usr/bin/env bash
# Create the side virtualenv with real MXNet 1.9.1 and GluonCV 0.10.5 (tests only; kiln itself never
# imports mxnet). Idempotent: installs only what does not import yet. Usage: tests/mxnet/make_venv.sh [VENV]
# MXNet 1.9.1 needs numpy<1.24 (it uses np.bool) and the Debian package libgomp1 at run time.
# GluonCV goes in without its declared dependencies (opencv-python, pandas, matplotlib, yacs, autocfg and
# ten more): `from gluoncv import model_zoo` imports only tqdm, Pillow and portalocker of them, besides
# requests and scipy, which mxnet and scikit-learn bring.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-mxnet}"
python="${PYTHON:-python3.11}"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
installed=no

if ! "$venv/bin/python" -c "import mxnet" 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "${pip[@]}" "mxnet==1.9.1" "numpy>=1.23,<1.24" "scikit-learn>=1.2,<1.4"
    installed=yes
fi
if ! "$venv/bin/python" -c "from gluoncv import model_zoo" 2>/dev/null; then
    "${pip[@]}" "tqdm>=4,<5" "Pillow>=9,<14" "portalocker>=2,<5"
    "${pip[@]}" --no-deps "gluoncv==0.10.5"
    installed=yes
fi
[ "$installed" = no ] || "$venv/bin/python" -W ignore -c "import mxnet, numpy, gluoncv.model_zoo
print('mxnet', mxnet.__version__, 'numpy', numpy.__version__, 'gluoncv imports')"
