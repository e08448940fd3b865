#!/usr/bin/env bash
# Installs the project with its test extras into .venv and runs the linter and the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh" "test,l0,bench,lightning,vision,onnx,transformers,hf,accelerate"
cd "$root"
ruff check conopt applications tests benchmarks
python -m pytest -q -p no:cacheprovider "$@"
