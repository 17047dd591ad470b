"""LoRAServing builders: vLLM and transformers Deployments, Service, ConfigMap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraf_operator.api.models import LoRAServing
from loraf_operator.api.serve_config import ServeConfig
from loraf_operator.builders import serving as b
from loraf_operator.builders.common import BuildDefaults
from loraf_operator.builders.naming import serving_child_name, serving_config_map_name

DEFAULTS = BuildDefaults(trainer_image="trainer:1", s3_endpoint="http://s3:9000")


def sv(**spec: Any) -> LoRAServing:
    base: dict[str, Any] = {"baseModel": {"huggingFace": "org/base"}}
    return LoRAServing.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u-1"},
            "spec": {**base, **spec},
        }
    )


def adapter(name: str, rank: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "uri": f"s3://bkt/{name}/run-1/"}
    if rank is not None:
        out["rank"] = rank
    return out


def _container(dep: dict[str, Any], name: str = "server") -> dict[str, Any]:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize(
    ("spec", "slots", "max_rank"),
    [
        ({}, "4", "16"),
        ({"maxAdapters": 1, "maxLoraRank": 8, "adapters": [adapter("a", 8)]}, "1", "8"),
        ({"maxAdapters": 8, "maxLoraRank": 64, "adapters": [adapter("a"), adapter("b", 64)]},
         "8", "64"),
    ],
)  # fmt: skip
def test_vllm_args(spec: dict[str, Any], slots: str, max_rank: str) -> None:
    dep = b.build_deployment(sv(**spec, engineArgs=["--max-model-len", "4096"]), DEFAULTS)
    server = _container(dep)
    args = server["args"]
    assert server["command"] == ["vllm", "serve"]
    assert "--enable-lora" in args
    assert _arg(args, "--model") == "org/base"
    assert _arg(args, "--served-model-name") == "org/base"
    assert _arg(args, "--max-loras") == _arg(args, "--max-cpu-loras") == slots
    assert _arg(args, "--max-lora-rank") == max_rank
    assert _arg(args, "--port") == "8000"
    # Adapters are registered at runtime by the sidecar, never on the command line.
    assert "--lora-modules" not in args
    assert args[-2:] == ["--max-model-len", "4096"]  # user args last: they win


def test_adding_an_adapter_does_not_restart_vllm_pods() -> None:
    one = b.build_deployment(sv(adapters=[adapter("a", 8)]), DEFAULTS)
    two = b.build_deployment(sv(adapters=[adapter("a", 8), adapter("b", 16)]), DEFAULTS)
    assert one["spec"]["template"] == two["spec"]["template"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"maxAdapters": 1, "adapters": [adapter("a"), adapter("b")]}, "maxAdapters"),
        ({"maxLoraRank": 8, "adapters": [adapter("a", 16)]}, "maxLoraRank"),
        ({"maxLoraRank": 24}, "maxLoraRank"),
    ],
)
def test_serving_slots_refuse_what_vllm_cannot_hold(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sv(**spec)


@pytest.mark.parametrize(
    ("base_model", "model_arg", "fetch_base"),
    [
        # GGUF: converted to a plain folder by the init container (no LoRA on GGUF layers).
        ({"huggingFace": "org/m", "ggufFile": "m.Q4.gguf"}, "/models/base", True),
        ({"pvc": {"claimName": "models", "path": "/llama"}}, "/mnt/pvc/models/llama", False),
        ({"pvc": {"claimName": "models", "path": "/g"}, "ggufFile": "m.gguf"}, "/models/base",
         True),
        ({"s3": "s3://bkt/models/x/"}, "/models/base", True),
        ({"huggingFace": "org/m"}, "org/m", False),
    ],
)  # fmt: skip
def test_vllm_model_sources(base_model: dict[str, Any], model_arg: str, fetch_base: bool) -> None:
    dep = b.build_deployment(sv(baseModel=base_model), DEFAULTS)
    assert _arg(_container(dep)["args"], "--model") == model_arg
    inits = dep["spec"]["template"]["spec"].get("initContainers", [])
    assert [c["command"][-2:] for c in inits] == (
        [["--base-to", "/models/base"]] if fetch_base else []
    )
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == (["models"] if "pvc" in base_model else [])


def test_vllm_pod_fetches_verified_adapters_and_enables_runtime_loading() -> None:
    s = sv(
        adapters=[adapter("a", 8)],
        credentialsSecretRef={"name": "s3-creds"},
        resources={"gpus": 2, "memory": "40Gi"},
    )
    pod = b.build_deployment(s, DEFAULTS)["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # a hub model: vLLM downloads it itself
    sidecar = next(c for c in pod["containers"] if c["name"] == "sync-adapters")
    assert sidecar["image"] == "trainer:1"
    assert sidecar["command"][-2:] == ["--sync-vllm", "/adapters"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8001}
    cfg = yaml.safe_load(b.build_config_map(s, DEFAULTS)["data"]["serve.yaml"])
    assert (cfg["port"], cfg["syncPort"], cfg["maxLoraRank"]) == (8000, 8001, 16)
    # what the engines read back is what the builder wrote (one model, api.serve_config)
    assert ServeConfig.model_validate(cfg) == b.serve_config(s, DEFAULTS)
    server = next(c for c in pod["containers"] if c["name"] == "server")
    assert server["image"] == b.DEFAULT_VLLM_IMAGE
    assert server["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in server["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert "VLLM_PLUGINS" not in env  # no filesystem resolver: the sidecar registers
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    # Secrets only by reference.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert server["resources"] == {
        "requests": {"nvidia.com/gpu": "2", "memory": "40Gi"},
        "limits": {"nvidia.com/gpu": "2", "memory": "40Gi"},
    }
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert mounts["adapters"] == "/adapters" and mounts["config"] == "/etc/loraf-serving"
    # Shared emptyDir, config mounted as a directory (no subPath: it must update in place).
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols["adapters"]
    assert all("subPath" not in m for m in server["volumeMounts"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": 8000}
    assert server["securityContext"]["runAsNonRoot"] is True


def test_vllm_runs_the_system_prompt_middleware_shipped_in_its_config_map(
    tmp_path: Path,
) -> None:
    """vLLM imports loraf_vllm_plugin from the mounted ConfigMap, and reads the prompts
    the sidecar writes into the shared adapters folder."""
    s = sv(adapters=[adapter("a")])
    pod = b.build_deployment(s, DEFAULTS)["spec"]["template"]["spec"]
    server = _container({"spec": {"template": {"spec": pod}}})
    assert _arg(server["args"], "--middleware") == "loraf_vllm_plugin.SystemPromptMiddleware"
    env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
    assert env["PYTHONPATH"] == "/etc/loraf-serving"
    assert env["LORAF_SYSTEM_PROMPTS"] == "/adapters/system-prompts.json"
    source = b.build_config_map(s, DEFAULTS)["data"]["loraf_vllm_plugin.py"]
    # Importable on its own, by a Python without loraf (as in the vLLM image).
    (tmp_path / "loraf_vllm_plugin.py").write_text(source)
    probe = "import sys, loraf_vllm_plugin as p; assert 'loraf_operator' not in sys.modules; " \
        "print(p.SystemPromptMiddleware.__name__)"  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = [{str(tmp_path)!r}]; {probe}"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.strip() == "SystemPromptMiddleware"
    assert "loraf_vllm_plugin.py" not in b.build_config_map(sv(engine="transformers"))["data"]


def test_a_new_vllm_plugin_restarts_vllm_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    before = b.build_deployment(sv(), DEFAULTS)["spec"]["template"]
    monkeypatch.setattr(b, "vllm_plugin_source", lambda: "# another plugin\n")
    after = b.build_deployment(sv(), DEFAULTS)["spec"]["template"]
    assert before["metadata"]["annotations"] != after["metadata"]["annotations"]


@pytest.mark.parametrize("port", [8000, 9001])
def test_transformers_engine(port: int) -> None:
    s = sv(engine="transformers", port=port, adapters=[adapter("a")], resources={"gpus": 0})
    dep = b.build_deployment(s, DEFAULTS)
    pod = dep["spec"]["template"]["spec"]
    assert "initContainers" not in pod and len(pod["containers"]) == 1
    server = pod["containers"][0]
    assert server["image"] == "trainer:1"
    assert server["command"] == [
        "python",
        "-m",
        "loraf_trainer.serve_cli",
        "--config",
        "/etc/loraf-serving/serve.yaml",
    ]
    assert "resources" not in server and "tolerations" not in pod
    assert server["readinessProbe"]["httpGet"]["port"] == port
    cm = b.build_config_map(s, DEFAULTS)
    cfg = yaml.safe_load(cm["data"]["serve.yaml"])
    assert cfg["port"] == port and cfg["baseName"] == "org/base"
    assert "syncPort" not in cfg and "maxLoraRank" not in cfg  # vLLM's sidecar only
    parsed = ServeConfig.model_validate(cfg)
    assert parsed == b.serve_config(s, DEFAULTS) and str(parsed.work_dir) == "/models/work"
    # a hand-written config may leave baseName out: the base model's display name
    assert ServeConfig.model_validate({"baseModel": cfg["baseModel"]}).base_name == "org/base"
    with pytest.raises(ValueError, match="pollSecond"):  # a misspelled key is an error
        ServeConfig.model_validate({**cfg, "pollSecond": 1})
    assert cfg["adaptersFile"] == "/etc/loraf-serving/adapters.json"
    assert cfg["endpoint"] == "http://s3:9000"
    assert json.loads(cm["data"]["adapters.json"]) == {
        "adapters": [{"name": "a", "uri": "s3://bkt/a/run-1/"}]
    }


def test_adding_an_adapter_does_not_restart_transformers_pods() -> None:
    one = b.build_deployment(sv(engine="transformers", adapters=[adapter("a")]), DEFAULTS)
    two = b.build_deployment(
        sv(engine="transformers", adapters=[adapter("a"), adapter("b")]), DEFAULTS
    )
    assert one["spec"]["template"] == two["spec"]["template"]


def test_service_metadata_and_url() -> None:
    s = sv(replicas=3)
    svc = b.build_service(s)
    dep = b.build_deployment(s, DEFAULTS)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert set(svc["spec"]["selector"].items()) <= set(
        dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert dep["spec"]["replicas"] == 3
    for obj in (svc, dep, b.build_config_map(s, DEFAULTS)):
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "LoRAServing",
            "chat",
            "u-1",
            True,
        )
        assert obj["metadata"]["namespace"] == "ns"
    assert b.service_url(s) == "http://chat.ns.svc:8000/v1"


def test_long_names_fit_63_chars() -> None:
    name = "x" * 200
    assert len(serving_child_name(name)) <= 63
    assert len(serving_config_map_name(name)) <= 63
    assert serving_config_map_name(name).endswith("-adapters")
    assert serving_config_map_name("chat") == "chat-adapters"  # short names unchanged


def test_two_long_names_with_one_prefix_get_their_own_config_maps() -> None:
    # the adapter list of one LoRAServing must never overwrite another's (issue 18)
    a, b_ = "shared-" + "x" * 50 + "-one", "shared-" + "x" * 50 + "-two"
    assert len(a) == len(b_) == 61 and a[:54] == b_[:54]
    assert serving_config_map_name(a) != serving_config_map_name(b_)
    assert all(len(serving_config_map_name(n)) <= 63 for n in (a, b_))
    built = []
    for n in (a, b_):  # what the operator applies
        obj = sv().model_dump(by_alias=True) | {"metadata": {"name": n, "namespace": "ns"}}
        built.append(b.build_config_map(LoRAServing.model_validate(obj))["metadata"]["name"])
    assert built[0] != built[1]
