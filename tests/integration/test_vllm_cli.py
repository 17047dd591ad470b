"""The vLLM engine's arguments, as the builders write them, parsed and validated by the
real `vllm serve` parser (the pinned CPU build, hack/vllm-venv.sh): a builder change that
vLLM would refuse fails here in seconds, before the e2e starts an engine."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from loraf_operator.api.models import LoRAServing
from loraf_operator.builders import serving as b
from loraf_operator.builders.common import BuildDefaults
from tests.conftest import vllm_env

# Parse each argv exactly as `vllm serve` does; report what vLLM understood, or its error.
PARSE = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    try:
        args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
        validate_parsed_serve_args(args)
        keys = ("model", "served_model_name", "host", "port", "enable_lora", "max_loras",
                "max_cpu_loras", "max_lora_rank", "trust_remote_code", "max_model_len")
        out.append({k: getattr(args, k) for k in keys})
    except (SystemExit, Exception) as e:
        out.append({"error": repr(e)})
print("RESULT" + json.dumps(out))
"""

SPECS: list[dict[str, Any]] = [
    {"baseModel": {"huggingFace": "org/base"}},
    {
        "baseModel": {"s3": "s3://models/smollm2/", "ggufFile": "m.Q4_1.gguf"},
        "maxAdapters": 8,
        "maxLoraRank": 64,
        "adapters": [{"name": "a", "uri": "s3://bkt/a/run-1/", "rank": 64}],
        "engineArgs": ["--max-model-len", "512"],
    },
    {
        "baseModel": {"pvc": {"claimName": "models", "path": "/llama"}, "trustRemoteCode": True},
        "maxLoraRank": 512,
        "port": 9000,
    },
]


def parse(argvs: list[list[str]]) -> list[dict[str, Any]]:
    res = subprocess.run(
        [str(vllm_env() / "bin" / "python"), "-c", PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, res.stderr[-3000:]
    return list(json.loads(line.removeprefix("RESULT")))


def server_argv(spec: dict[str, Any]) -> list[str]:
    sv = LoRAServing.model_validate({"metadata": {"name": "s", "namespace": "ns"}, "spec": spec})
    pod = b.build_deployment(sv, BuildDefaults())["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    assert server["command"] == ["vllm", "serve"]
    return list(server["args"])


@pytest.fixture(scope="module")
def parsed() -> list[dict[str, Any]]:
    # The last argv is one vLLM must refuse: proof that a refusal is seen here.
    return parse([*(server_argv(s) for s in SPECS), [*server_argv(SPECS[0]), "--no-such-flag"]])


@pytest.mark.parametrize("i", range(len(SPECS)))
def test_vllm_accepts_the_builders_args(parsed: list[dict[str, Any]], i: int) -> None:
    spec = LoRAServing.model_validate(
        {"metadata": {"name": "s", "namespace": "ns"}, "spec": SPECS[i]}
    ).spec
    got = parsed[i]
    assert "error" not in got, got
    assert got["enable_lora"] is True
    assert got["model"] == b.vllm_model_path(
        LoRAServing.model_validate({"metadata": {"name": "s"}, "spec": SPECS[i]})
    )
    assert got["served_model_name"] == [spec.base_model.display_name]
    assert (got["port"], got["host"]) == (spec.port, "0.0.0.0")
    assert got["max_loras"] == got["max_cpu_loras"] == spec.max_adapters
    assert got["max_lora_rank"] == spec.max_lora_rank
    assert got["trust_remote_code"] is spec.base_model.trust_remote_code
    if "--max-model-len" in spec.engine_args:
        assert got["max_model_len"] == 512  # engineArgs reach vLLM as given


def test_vllm_refuses_an_unknown_flag(parsed: list[dict[str, Any]]) -> None:
    assert parsed[-1] == {"error": "SystemExit(2)"}  # argparse: unrecognized arguments
