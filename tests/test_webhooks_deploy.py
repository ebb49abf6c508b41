"""The Kubernetes example for webhook relaying: valid manifests, and a store that is on
a persistent volume per replica."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from proxy.config import parse_config
from tests.test_deploy import KUBERNETES_VERSION, kubernetes_validate

MANIFEST = Path(__file__).parent.parent / "deploy" / "kubernetes" / "webhooks" / "statefulset.yaml"


def documents() -> dict[str, dict[str, Any]]:
    kubernetes_validate()  # brings PyYAML
    yaml = importlib.import_module("yaml")
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_the_webhook_manifests_validate_for_the_pinned_kubernetes() -> None:
    validator = kubernetes_validate()
    for document in documents().values():
        validator.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_store_is_on_a_persistent_volume_per_replica() -> None:
    """The config's [store] path lies on the StatefulSet's volumeClaimTemplate mount."""
    found = documents()
    tomllib = importlib.import_module("tomllib")
    raw = tomllib.loads(found["ConfigMap"]["data"]["proxy.toml"])
    env = {
        "VIPPS_TOKEN_URL": "https://apitest.vipps.no/accesstoken/get",
        "VIPPS_API_URL": "https://apitest.vipps.no",
        "VIPPS_CLIENT_ID": "a",
        "VIPPS_CLIENT_SECRET": "client-secret-value",
        "VIPPS_SUBSCRIPTION_KEY": "subkey-value",
    }
    hook = raw["webhooks"][0]
    secret_file = Path(hook.pop("secret_file"))  # the mounted Secret is not here
    hook["secret"] = "s3cret-value"
    config = parse_config(raw, env, source="/etc/vipps-proxy/proxy.toml")
    statefulset = found["StatefulSet"]["spec"]
    (claim,) = statefulset["volumeClaimTemplates"]
    (container,) = statefulset["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(config.store.path).parent == Path(mounts[claim["metadata"]["name"]])
    assert secret_file.parent == Path(mounts["webhook-secret"])
    volumes = {v["name"] for v in statefulset["template"]["spec"]["volumes"]}
    assert claim["metadata"]["name"] not in volumes  # not an emptyDir or other pod volume
