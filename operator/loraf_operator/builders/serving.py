"""A LoRAServing's children: ConfigMap (adapter list + engine config), Deployment, Service.

Pure: resource in, manifest dicts out. Two engines share one contract (OpenAI API on
`spec.port`, `/health`, adapters by name):

- `vllm`: the vLLM OpenAI server with `--enable-lora`; an init container (the trainer
  image) fetches every listed adapter from S3 into a shared emptyDir after checking the
  run's manifest and sha256s, so each replica — also one that restarts or scales up later
  — starts with every adapter (`--lora-modules`). A sidecar keeps syncing that folder from
  the mounted adapter list, and vLLM's filesystem resolver serves adapters that appear
  there at runtime (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
- `transformers`: `loraf serve` from the trainer image; it polls the mounted adapter
  list itself and loads new adapters without a restart.

The adapter list lives in a ConfigMap mounted as a directory (not subPath), so the kubelet
updates the file in place when the operator changes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from ..api.models import LoRAServing
from .common import BuildDefaults, container_resources, owner_reference
from .job import GPU_PRODUCT_LABEL, GPU_TOLERATION, RUN_AS_USER
from .naming import label_value

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
#: --max-lora-rank values vLLM accepts; an adapter's rank is rounded up to the next one.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_RANK = 16  # when no adapter states its rank
CONFIG_DIR = "/etc/loraf-serving"
ADAPTERS_FILE = "adapters.json"
SERVE_FILE = "serve.yaml"
ADAPTERS_DIR = "/adapters"
MODELS_DIR = "/models"  # base model fetched from S3 (vLLM) / the engine's cache
PVC_ROOT = "/mnt/pvc"
SERVING = "loraf.dev/serving"
CONFIG_HASH = "loraf.dev/config-hash"
POLL_SECONDS = 5


def deployment_name(name: str) -> str:
    return label_value(name)


def service_name(name: str) -> str:
    return label_value(name)


def config_map_name(name: str) -> str:
    return f"{label_value(name)[:54].rstrip('-._')}-adapters"


def labels(sv: LoRAServing) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "loraf-serving",
        "app.kubernetes.io/instance": label_value(sv.name),
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "loraf",
        "app.kubernetes.io/managed-by": "loraf",
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


def max_lora_rank(ranks: list[int | None]) -> int:
    """The largest adapter rank rounded up to a value vLLM accepts."""
    known = [r for r in ranks if r is not None]
    top = max(known) if known else DEFAULT_RANK
    for allowed in VLLM_LORA_RANKS:
        if top <= allowed:
            return allowed
    raise ValueError(f"adapter rank {top} exceeds vLLM's maximum of {VLLM_LORA_RANKS[-1]}")


def base_name(sv: LoRAServing) -> str:
    """Name the base model is served under (the OpenAI `model` for no adapter)."""
    return sv.spec.base_model.display_name


def adapters_json(sv: LoRAServing) -> str:
    return json.dumps(
        {"adapters": [a.to_dict() for a in sv.spec.adapters]}, indent=2, sort_keys=True
    )


def _s3(sv: LoRAServing, defaults: BuildDefaults) -> tuple[str | None, str | None]:
    return sv.spec.endpoint or defaults.s3_endpoint, sv.spec.region or defaults.s3_region


def serve_config(sv: LoRAServing, defaults: BuildDefaults) -> dict[str, Any]:
    """The transformers engine's config (loraf_trainer.serve.ServeConfig)."""
    endpoint, region = _s3(sv, defaults)
    out: dict[str, Any] = {
        "baseModel": sv.spec.base_model.to_dict(),
        "baseName": base_name(sv),
        "adaptersFile": f"{CONFIG_DIR}/{ADAPTERS_FILE}",
        "workDir": f"{MODELS_DIR}/work",
        "port": sv.spec.port,
        "pollSeconds": POLL_SECONDS,
    }
    if endpoint:
        out["endpoint"] = endpoint
    if region:
        out["region"] = region
    return out


def build_config_map(sv: LoRAServing, defaults: BuildDefaults | None = None) -> dict[str, Any]:
    defaults = defaults or BuildDefaults()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(sv, config_map_name(sv.name)),
        "data": {
            ADAPTERS_FILE: adapters_json(sv),
            SERVE_FILE: yaml.safe_dump(serve_config(sv, defaults), sort_keys=True),
        },
    }


def _env(sv: LoRAServing, defaults: BuildDefaults) -> list[dict[str, Any]]:
    """S3 endpoint/region and keys (by reference only), cache and home folders."""
    endpoint, region = _s3(sv, defaults)
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"{MODELS_DIR}/home"},
        {"name": "LORAF_CACHE", "value": f"{MODELS_DIR}/cache"},
        {"name": "LORAF_PVC_ROOT", "value": PVC_ROOT},
    ]
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if region:
        env.append({"name": "AWS_REGION", "value": region})
    ref = sv.spec.credentials_secret_ref
    if ref is not None:
        for var, key in (
            ("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}})
    hf = sv.spec.base_model.token_secret_ref
    if hf is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf.name, "key": hf.key}}}
        )
    return env


def _volumes(sv: LoRAServing) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(sv.name)}},
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
    if pvc is not None:
        volumes.append(
            {
                "name": "base-model",
                "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True},
            }
        )
        mounts.append(
            {"name": "base-model", "mountPath": f"{PVC_ROOT}/{pvc.claim_name}", "readOnly": True}
        )
    return volumes, mounts


_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def probes(port: int) -> dict[str, Any]:
    """Startup allows a long model load (up to 30 min); then readiness/liveness on /health."""
    get = {"httpGet": {"path": "/health", "port": port}}
    return {
        "startupProbe": {**get, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**get, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**get, "periodSeconds": 15, "failureThreshold": 4},
    }


def vllm_model_path(sv: LoRAServing) -> str:
    """What vLLM's --model gets: the hub id, the PVC path or the S3 copy's folder; GGUF
    is a file path."""
    b = sv.spec.base_model
    if b.hugging_face:
        return b.hugging_face if not b.gguf_file else f"{b.hugging_face}/{b.gguf_file}"
    if b.pvc is not None:
        root = f"{PVC_ROOT}/{b.pvc.claim_name}/{b.pvc.path.strip('/')}".rstrip("/")
    else:
        root = f"{MODELS_DIR}/base"
    return f"{root}/{b.gguf_file}" if b.gguf_file else root


def vllm_args(sv: LoRAServing) -> list[str]:
    adapters = sv.spec.adapters
    args = [
        "--model", vllm_model_path(sv),
        "--served-model-name", base_name(sv),
        "--host", "0.0.0.0",
        "--port", str(sv.spec.port),
        "--enable-lora",
        "--max-loras", str(max(1, len(adapters))),
        "--max-lora-rank", str(max_lora_rank([a.rank for a in adapters])),
    ]  # fmt: skip
    if sv.spec.base_model.trust_remote_code:
        args.append("--trust-remote-code")
    if adapters:
        args += ["--lora-modules", *(f"{a.name}={ADAPTERS_DIR}/{a.name}" for a in adapters)]
    return args + list(sv.spec.engine_args)


def _fetch_command(sv: LoRAServing, watch: bool) -> list[str]:
    cmd = [
        "python",
        "-m",
        "loraf_trainer.serve_cli",
        "--config",
        f"{CONFIG_DIR}/{SERVE_FILE}",
        "--fetch-to",
        ADAPTERS_DIR,
    ]
    if sv.spec.base_model.s3 and not watch:
        cmd += ["--base-to", f"{MODELS_DIR}/base"]
    return cmd + (["--watch"] if watch else [])


def build_pod_spec(sv: LoRAServing, defaults: BuildDefaults) -> dict[str, Any]:
    volumes, mounts = _volumes(sv)
    env = _env(sv, defaults)
    port = sv.spec.port
    res = sv.spec.resources
    helper = {
        "image": defaults.trainer_image,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": _SECURITY,
    }
    server: dict[str, Any] = {
        "name": "server",
        "ports": [{"name": "http", "containerPort": port}],
        "volumeMounts": mounts,
        "securityContext": _SECURITY,
        **probes(port),
    }
    pod: dict[str, Any] = {"volumes": volumes, "securityContext": {"fsGroup": RUN_AS_USER}}
    if sv.spec.engine == "vllm":
        server["image"] = res.image or DEFAULT_VLLM_IMAGE
        server["args"] = vllm_args(sv)
        server["env"] = [
            *env,
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
            {"name": "VLLM_PLUGINS", "value": "lora_filesystem_resolver"},
            {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": ADAPTERS_DIR},
            {"name": "HF_HOME", "value": f"{MODELS_DIR}/huggingface"},
        ]
        pod["initContainers"] = [
            {"name": "fetch-adapters", **helper, "command": _fetch_command(sv, watch=False)}
        ]
        sidecar = {"name": "sync-adapters", **helper, "command": _fetch_command(sv, watch=True)}
        pod["containers"] = [server, sidecar]
    else:
        server["image"] = res.image or defaults.trainer_image
        server["command"] = [
            "python",
            "-m",
            "loraf_trainer.serve_cli",
            "--config",
            f"{CONFIG_DIR}/{SERVE_FILE}",
        ]
        server["env"] = env
        pod["containers"] = [server]
    resources = container_resources(sv.spec.resources)
    if resources:
        server["resources"] = resources
    if res.gpus > 0:
        pod["tolerations"] = [dict(GPU_TOLERATION)]
        if res.gpu_type:
            pod["nodeSelector"] = {GPU_PRODUCT_LABEL: res.gpu_type}
    if res.node_selector:
        pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **res.node_selector}
    if res.tolerations:
        pod["tolerations"] = [*pod.get("tolerations", []), *res.tolerations]
    return pod


def build_deployment(sv: LoRAServing, defaults: BuildDefaults | None = None) -> dict[str, Any]:
    defaults = defaults or BuildDefaults()
    pod = build_pod_spec(sv, defaults)
    # The transformers engine reloads the adapter list itself, so only the engine config
    # (not the adapter list) is hashed into the template: adding an adapter never restarts it.
    config_hash = hashlib.sha256(
        json.dumps(serve_config(sv, defaults), sort_keys=True).encode()
    ).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(sv, deployment_name(sv.name)),
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
        "metadata": _metadata(sv, service_name(sv.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(sv),
            "ports": [{"name": "http", "port": sv.spec.port, "targetPort": "http"}],
        },
    }


def service_url(sv: LoRAServing) -> str:
    return f"http://{service_name(sv.name)}.{sv.namespace}.svc:{sv.spec.port}/v1"
