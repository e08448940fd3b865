#!/usr/bin/env bash
# Installs the project with the sparsity extras into .venv and runs the CPU demo:
# MNIST-5k MLP trained to expected density 0.35, then the same with a penalty (about 4 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh" "l0"
cd "$root"
python -m l0_sparsity demo "$@"
