"""What a platform engineer reads in the rendered manifests, checked: unprivileged pods, probes on
graft's health routes, a drain that fits the grace period, writable paths on volumes, thread pools
sized to the pod, and autoscaling queries that select metrics and routes graft really serves."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import find

DRAIN_S = 30  # graft exits within this long after SIGTERM (in-flight requests finish first)
DEPLOYMENTS = ("base", "overlays/cpu", "overlays/gpu", "overlays/cpu+keda")
WORKLOADS = (*DEPLOYMENTS, "kserve")
_UNITS = {"": 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str | int) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    return float(number) * _UNITS[unit]


def workload(objects: list[dict]) -> tuple[dict, dict]:
    """The pod-level settings and graft's container: a Deployment's template, or for KServe the
    InferenceService's predictor (pod fields) with the ServingRuntime's container."""
    if any(item["kind"] == "Deployment" for item in objects):
        pod = find(objects, "Deployment")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        return pod, container
    (container,) = find(objects, "ServingRuntime")["spec"]["containers"]
    return find(objects, "InferenceService")["spec"]["predictor"], container


def environment(objects: list[dict], container: dict) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom), then its own `env`."""
    config_maps = {item["metadata"]["name"]: item["data"] for item in objects if item["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    env.update({entry["name"]: entry["value"] for entry in container.get("env", [])})
    return env


def mounted(container: dict, path: str) -> dict | None:
    """The volume mount that holds `path`, if any."""
    for mount in container.get("volumeMounts", []):
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount
    return None


@pytest.mark.parametrize("variant", WORKLOADS)
def test_pods_run_unprivileged(rendered, variant):
    pod, container = workload(rendered[variant])
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # The Service is named graft: its links would put GRAFT_* variables in graft's environment.
    assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("variant", WORKLOADS)
def test_probes_watch_graft_health_routes(rendered, variant):
    _, container = workload(rendered[variant])
    ports = {port.get("name") for port in container["ports"]} | {port["containerPort"] for port in container["ports"]}
    routes = {"startupProbe": {"/readyz", "/v2/health/ready"}, "readinessProbe": {"/readyz", "/v2/health/ready"},
              "livenessProbe": {"/livez", "/v2/health/live"}}
    for probe, paths in routes.items():
        assert container[probe]["httpGet"]["path"] in paths, probe
        assert container[probe]["httpGet"]["port"] in ports, probe
    # Readiness goes at once on SIGTERM; liveness must not kill a pod that is only busy.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30


@pytest.mark.parametrize("variant", WORKLOADS)
def test_drain_fits_in_the_grace_period(rendered, variant):
    pod, container = workload(rendered[variant])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5, "endpoint removal needs a few seconds to reach every proxy"
    assert pod["terminationGracePeriodSeconds"] > pause + DRAIN_S


@pytest.mark.parametrize("variant", WORKLOADS)
def test_writable_paths_are_volumes(rendered, variant):
    """The root filesystem is read-only: /tmp and every path graft writes are volumes."""
    objects = rendered[variant]
    _, container = workload(objects)
    env = environment(objects, container)
    assert mounted(container, "/tmp") is not None
    for name in ("GRAFT_HEADS_DIR", "GRAFT_TRT_CACHE_DIR"):
        if name in env:
            mount = mounted(container, env[name])
            assert mount is not None and not mount.get("readOnly"), name
    for name in ("GRAFT_ADMIN_TOKEN_FILE", "GRAFT_API_KEYS_FILE"):
        if name in env:
            assert mounted(container, env[name])["readOnly"] is True, name


@pytest.mark.parametrize("variant", WORKLOADS)
def test_resources_and_thread_pools_fit_the_pod(rendered, variant):
    objects = rendered[variant]
    _, container = workload(objects)
    resources = container.get("resources")
    if variant == "base":
        assert resources is None, "the base leaves sizing to the overlays"
        return
    requests, limits = resources["requests"], resources["limits"]
    assert quantity(requests["memory"]) <= quantity(limits["memory"])
    assert "cpu" not in limits, "CPU limits throttle a batch mid-run; requests reserve the cores"
    # ONNX Runtime and the decoder would otherwise size their pools from the node's cores.
    env = environment(objects, container)
    for name in ("GRAFT_INTRA_OP_THREADS", "GRAFT_DECODE_THREADS"):
        assert 1 <= int(env[name]) <= quantity(requests["cpu"]), name


def test_gpu_overlay_gets_a_gpu_an_engine_cache_and_time_to_build(rendered):
    objects = rendered["overlays/gpu"]
    pod, container = workload(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    cache = environment(objects, container)["GRAFT_TRT_CACHE_DIR"]
    volume = next(v for v in pod["volumes"] if v["name"] == mounted(container, cache)["name"])
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, "TensorRT engine builds take minutes"
    _, cpu = workload(rendered["overlays/cpu"])
    assert cpu["startupProbe"]["periodSeconds"] * cpu["startupProbe"]["failureThreshold"] >= 60


@pytest.mark.parametrize("variant", DEPLOYMENTS)
def test_service_budget_and_scraping_select_the_pods(rendered, variant):
    objects = rendered[variant]
    deployment = find(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = find(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {port["name"]}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    heads = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "heads")
    claim = find(objects, "PersistentVolumeClaim")
    assert heads["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica serves the same heads"
