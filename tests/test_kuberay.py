"""deploy/kuberay/rayservice.yaml against KubeRay's own RayService CRD schema (copied unchanged in
tests/data/kuberay, see its README), and its serveConfigV2 against serve_config.yaml. No Kubernetes
here: the schema is what `kubectl apply` would check, and the application is the one the other
tests run."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from deployments.app import AppArgs

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = REPO / "deploy" / "kuberay" / "Dockerfile"
CRD = Path(os.environ.get("GRID_KUBERAY_CRD", REPO / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"))
# where the manifest's application may differ from serve_config.yaml's, and why: no cluster file on
# Kubernetes (names from labels and hostnames, capacities from Ray), a token from a Secret, and the
# Service's name among the hosts the API answers to
KUBERNETES_ONLY = {"cluster_config": None, "token_env": "GRID_TOKEN"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not CRD.exists():
        reason = f"KubeRay's RayService CRD is not at {CRD} (set GRID_KUBERAY_CRD to its path)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: C when it can
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the schema does not define: Kubernetes drops or refuses them (kubectl's strict
    validation), while plain JSON schema lets them pass."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if key not in schema["properties"]:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def groups(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_the_manifest_satisfies_kuberays_rayservice_schema(manifest: dict[str, Any],
                                                            schema: dict[str, Any]) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    jsonschema.validate(manifest, schema)
    assert list(unknown_fields(manifest, schema)) == []


def test_the_schema_check_catches_what_kubernetes_would_refuse(schema: dict[str, Any]) -> None:
    typo = yaml.safe_load(MANIFEST.read_text())
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2
    assert list(unknown_fields(typo, schema)) == [".spec.rayClusterConfig.workerGroupSpecs[0].replica"]
    wrong_type = yaml.safe_load(MANIFEST.read_text())
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)


def test_serve_config_v2_runs_serve_config_yamls_application(manifest: dict[str, Any]) -> None:
    ours = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"]
    theirs = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert len(theirs["applications"]) == len(ours) == 1
    app, local = theirs["applications"][0], ours[0]
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in local.items() if k != "args"}
    shared = {k: v for k, v in local["args"].items() if k not in KUBERNETES_ONLY}
    assert {k: v for k, v in app["args"].items() if k in shared} == shared
    assert {k: app["args"].get(k) for k in KUBERNETES_ONLY} == KUBERNETES_ONLY
    assert set(app["args"]) - set(shared) - set(KUBERNETES_ONLY) == {"allowed_hosts"}
    settings = AppArgs.model_validate(app["args"])  # what build_app does first
    assert manifest["spec"]["serveService"]["metadata"]["name"] in settings.allowed_hosts
    assert "127.0.0.1" in settings.allowed_hosts  # a port-forward still reaches it


def test_the_service_serves_the_http_port(manifest: dict[str, Any]) -> None:
    http = yaml.safe_load(manifest["spec"]["serveConfigV2"])["http_options"]
    assert http["host"] == "0.0.0.0"  # the pod's network, where the Service sends traffic
    ports = manifest["spec"]["serveService"]["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in ports] == [(http["port"], http["port"])]


def test_labels_are_set_per_group_never_in_ray_start_params(manifest: dict[str, Any]) -> None:
    assert all("labels" not in group["rayStartParams"] for group in groups(manifest))
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers and all(group["labels"] for group in workers)
    assert manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["labels"] == {"grid.io/node": "head"}


def test_the_image_is_built_from_rays_image_at_the_pinned_version(manifest: dict[str, Any]) -> None:
    ray_version = importlib.metadata.version("ray")
    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_version)}$", dockerfile, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}", dockerfile, re.M)
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    images = {c["image"] for group in groups(manifest) for c in group["template"]["spec"]["containers"]}
    assert images == {f"grid-serve:{importlib.metadata.version('grid-serve')}"}
