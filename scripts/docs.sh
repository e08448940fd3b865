#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html and runs the docs' code (examples and
# doctests), with warnings as errors. Installs the project with its docs and l0 extras into .venv.
# Extra arguments go to both sphinx builds (e.g. -j 2, or -E to rebuild from scratch).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh" "docs,l0,lightning,vision,onnx,transformers,hf,accelerate"
cd "$root"
# HTML first: it executes the sphinx-gallery examples, which the doctest build then reuses.
python -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
python -m sphinx -W --keep-going -b doctest "$@" docs docs/_build/doctest
echo "documentation: $root/docs/_build/html/index.html"
