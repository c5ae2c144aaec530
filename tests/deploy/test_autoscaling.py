"""The autoscaling wiring, end to end on paper: the HPA's metrics are served by the shipped
prometheus-adapter rules, every query selects a metric graft exports and exactly graft's inference
routes, and the KEDA and KServe alternatives scale on the same signals with the same targets."""

from __future__ import annotations

import re

import pytest
import yaml

from graft.service.metrics import metrics
from graft.service.routes import ENDPOINTS
from tests.deploy.conftest import KUBERNETES, find

# Metric names in PromQL: an identifier followed by its label matchers.
_SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
_ROUTES = re.compile(r'endpoint=~"([^"]+)"')
BENTOML_IN_FLIGHT = "bentoml_service_request_in_progress"  # BentoML's gauge, labelled by route
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}  # as /metrics names series


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict]:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["default"] is False, "only graft's rules: the defaults expose every series"
    return values["rules"]["custom"]


def exported() -> set[str]:
    """Series names graft's own metrics expose, plus BentoML's in-flight gauge."""
    families = [family for metric in vars(metrics()).values() for family in metric.collect()]
    names = {family.name + suffix for family in families for suffix in _SUFFIXES.get(family.type, ("",))}
    return names | {BENTOML_IN_FLIGHT}


def queries(objects: list[dict]) -> list[str]:
    """The PromQL of every KEDA trigger and KServe external metric in `objects`."""
    found = []
    for item in objects:
        if item["kind"] == "ScaledObject":
            found += [trigger["metadata"]["query"] for trigger in item["spec"]["triggers"]]
        if item["kind"] == "InferenceService":
            found += [m["external"]["metric"]["query"] for m in item["spec"]["predictor"]["autoScaling"]["metrics"]]
    return found


def check_query(query: str) -> None:
    """`query` selects only series graft exports and, by route, exactly the inference routes."""
    series = set(_SERIES.findall(query)) - {"<<.Series>>"}
    assert series and series <= exported(), query
    inference = {e.path for e in ENDPOINTS if e.guarded and e.access == "api"}
    for pattern in _ROUTES.findall(query):
        for endpoint in ENDPOINTS:  # fullmatch: Prometheus anchors label regexes at both ends
            path = re.sub(r"\{[^}]+\}", "m", endpoint.path)
            assert bool(re.fullmatch(pattern, path)) == (endpoint.path in inference), (pattern, endpoint.path)


def test_hpa_metrics_are_served_by_the_adapter_rules(rendered, adapter_rules):
    served = {rule["name"]["as"]: rule for rule in adapter_rules}
    for variant in ("overlays/cpu", "overlays/gpu"):
        hpa = find(rendered[variant], "HorizontalPodAutoscaler")
        names = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]]
        assert set(names) == set(served), variant
        assert all(metric["pods"]["target"]["type"] == "AverageValue" for metric in hpa["spec"]["metrics"])
    for rule in adapter_rules:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}, "per-pod metrics"
        (source,) = _SERIES.findall(rule["seriesQuery"])
        assert re.fullmatch(rule["name"]["matches"], source)
        check_query(rule["metricsQuery"].replace("<<.Series>>", source + "{"))


@pytest.mark.parametrize("variant", ["overlays/cpu+keda", "kserve"])
def test_keda_and_kserve_queries_select_graft_metrics(rendered, variant):
    found = queries(rendered[variant])
    assert found
    for query in found:
        check_query(query)


def test_keda_replaces_the_hpa_with_the_same_policy(rendered, adapter_rules):
    """The KEDA component drops the HPA (two autoscalers on one Deployment would fight) and scales on
    the same signals, targets, bounds and behaviour."""
    keda = rendered["overlays/cpu+keda"]
    assert not [item for item in keda if item["kind"] == "HorizontalPodAutoscaler"]
    scaled = find(keda, "ScaledObject")
    hpa = find(rendered["overlays/cpu"], "HorizontalPodAutoscaler")
    assert scaled["spec"]["scaleTargetRef"]["name"] == hpa["spec"]["scaleTargetRef"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    sources = {rule["name"]["as"]: _SERIES.findall(rule["seriesQuery"])[0] for rule in adapter_rules}
    targets = {sources[m["pods"]["metric"]["name"]]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    triggers = {}
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metricType"] == "AverageValue", "thresholds are per pod, as the HPA's"
        (series,) = _SERIES.findall(trigger["metadata"]["query"])
        triggers[series] = trigger["metadata"]["threshold"]
    assert triggers == targets


def test_kserve_scales_on_images_waiting_like_the_hpa(rendered):
    isvc = find(rendered["kserve"], "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    (metric,) = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
    assert _SERIES.findall(metric["external"]["metric"]["query"]) == ["graft_queue_depth"]
    hpa = find(rendered["overlays/cpu"], "HorizontalPodAutoscaler")
    images = next(m for m in hpa["spec"]["metrics"] if m["pods"]["metric"]["name"] == "graft_images_waiting")
    assert metric["external"]["target"]["value"] == images["pods"]["target"]["averageValue"]


def test_kserve_runtime_serves_the_inference_service(rendered):
    objects = rendered["kserve"]
    runtime, isvc = find(objects, "ServingRuntime"), find(objects, "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert runtime["spec"]["protocolVersions"] == ["v2"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's settings into
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(container["ports"][0]["containerPort"])
