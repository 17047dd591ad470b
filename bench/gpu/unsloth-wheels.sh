#!/usr/bin/env bash
# Wheels for the Unsloth runner (bench/gpu/runners.py build_unsloth), into .whl-uns/ (git-
# ignored; carry it next to .whl). Unsloth pins trl <= 1.15 and datasets < 5, so these go
# to their own --target folder, ahead of the project's on that runner's PYTHONPATH only.
# The unsloth wheel is 28.6 MB, 25 MB of which is its GUI ("studio/"); it is repacked
# without it so that both sets fit one call's 64 MiB carry.
set -euo pipefail
dest=${1:-.whl-uns}
rm -rf "$dest" && mkdir -p "$dest"
pip download -q --no-deps --dest "$dest" --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.3.0 torchao==0.18.0 \
  cut_cross_entropy==25.1.1 tyro==1.0.17 msgspec==0.23.0
python3 - "$dest"/unsloth-2026.10.9-py3-none-any.whl <<'PY'
import sys, zipfile, os
src = sys.argv[1]; tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith("studio/"):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"studio/"))
        zout.writestr(item, data)
os.replace(tmp, src)
PY
# imported by Unsloth, maybe already on the GPU host: install each only where missing
pip download -q --no-deps --dest "$dest/extra" --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  psutil einops sentencepiece protobuf
du -sh "$dest"
echo "install: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-uns $dest/*.whl;" \
  "for m in psutil einops sentencepiece google.protobuf; do python3 -c \"import \$m\" 2>/dev/null ||" \
  "python3 -m pip install -q --no-index --no-deps --find-links $dest/extra --target /tmp/site-uns \${m#google.}; done"
