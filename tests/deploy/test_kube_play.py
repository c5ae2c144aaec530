"""The CPU overlay run, not only validated: its rendered ConfigMap and Deployment played with
`podman kube play` (Debian's podman 4.3) as two replicas on one heads directory, ready through
`/readyz`, classifying, sharing a head fitted through one of them, and draining on SIGTERM.

What podman 4.3 cannot play is adapted, and only that: it plays Deployments and ConfigMaps (the
Service, budget, autoscaler and ServiceMonitor are cluster-side); it has no Service to publish a
port, so each replica gets a loopback `hostPort`; it refuses Secrets in the YAML ("not valid JSON"),
so the secret files come from a host directory, mounted where the Secret would be; and it has no
`fsGroup`, so the heads volume is a host directory uid 1034 can write. Everything else (image
settings, environment, read-only root, user, probes' paths) is the overlay's.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.containers import TOKEN, Container, fit_head, podman, served_within, shared_dir
from tests.deploy.conftest import KUBERNETES, find, render
from tests.e2e.conftest import decoded_images, free_port, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.container]

REPLICAS = ("a", "b")


def for_podman(objects: list[dict], image: str, replica: str, port: int, heads: Path, secrets: Path) -> dict:
    """The overlay's Deployment as podman 4.3 plays one replica of it (the module docstring lists
    what changes, and why)."""
    deployment = copy.deepcopy(find(objects, "Deployment"))
    deployment["metadata"]["name"] = f"graft-play-{os.getpid()}-{replica}"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container["image"] = image
    (port_spec,) = container["ports"]
    port_spec.update(hostPort=port, hostIP="127.0.0.1")
    host_paths = {"heads": heads, "secrets": secrets}
    for volume in pod["volumes"]:
        if volume["name"] in host_paths:
            volume.pop("persistentVolumeClaim", None)
            volume.pop("secret", None)
            volume["hostPath"] = {"path": str(host_paths[volume["name"]]), "type": "Directory"}
    return deployment


@pytest.fixture(scope="module")
def replicas(cpu_image, tmp_path_factory):
    """Both replicas, played from one YAML and ready; `podman kube down` afterwards."""
    objects = render(KUBERNETES / "overlays" / "cpu")
    root = tmp_path_factory.mktemp("kube-play")
    heads = shared_dir(root / "heads")
    secrets = root / "secrets"
    secrets.mkdir()
    for name, value in {"admin-token": TOKEN, "api-keys": ""}.items():  # as secret.example.yaml's keys
        (secrets / name).write_text(value)
        (secrets / name).chmod(0o644)
    ports = {replica: free_port() for replica in REPLICAS}
    deployments = [for_podman(objects, cpu_image, r, ports[r], heads, secrets) for r in REPLICAS]
    kube = root / "graft.yaml"
    kube.write_text(yaml.safe_dump_all([find(objects, "ConfigMap"), *deployments]))
    try:
        podman("kube", "play", str(kube))
        played = {}
        for replica, deployment in zip(REPLICAS, deployments):
            # podman names a Deployment's pod NAME-pod-0 and its containers POD-CONTAINER.
            name = f"{deployment['metadata']['name']}-pod-0-graft"
            played[replica] = Container(cpu_image, name, url=f"http://127.0.0.1:{ports[replica]}")
            played[replica].wait_ready()
        yield played
    finally:
        podman("kube", "down", str(kube), check=False)


def test_the_pods_run_as_the_manifest_says(replicas):
    config = podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{json .Config.Env}}",
                    replicas["a"].name).stdout
    user, read_only, env = config.split(" ", 2)
    assert (user, read_only) == ("1034:1034", "true")
    assert '"GRAFT_INTRA_OP_THREADS=2"' in env and '"GRAFT_LOG_FORMAT=json"' in env  # from the ConfigMap
    assert '"GRAFT_HEADS_DIR=/var/lib/graft/heads"' in env


def test_classifies_and_shares_a_head_across_replicas(replicas, photo_jpegs):
    photo = photo_jpegs["chelsea"]
    answer = httpx.post(replicas["a"].url + "/classify", files=upload(photo), timeout=30)
    assert answer.status_code == 200, answer.text
    assert "cat" in answer.json()["predictions"][0][0]["label"]
    fit_head(replicas["a"], "cat-or-cup")  # the admin token from the secret's file
    served_within(replicas["b"], "cat-or-cup", photo, present=True)


def test_sigterm_drains_the_request_in_flight(replicas, photo_jpegs):
    """As the kubelet does after preStop: SIGTERM to the container while the pod's network stays.
    (`podman kube down` itself kills at once in 4.3; it only cleans up, in the fixture.)"""
    replica = replicas["b"]
    answers: list[httpx.Response] = []
    body = upload(*[photo_jpegs["astronaut"]] * 32)
    decoded = decoded_images(replica.url)
    sender = threading.Thread(target=lambda: answers.append(httpx.post(replica.url + "/classify", files=body, timeout=60)))
    sender.start()
    started = time.monotonic()
    while decoded_images(replica.url) == decoded:  # SIGTERM once the request is being worked on
        assert time.monotonic() - started < 30, "the request never reached the pod"
        time.sleep(0.005)
    grace = find(render(KUBERNETES / "overlays" / "cpu"), "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    podman("stop", "-t", str(grace), replica.name)
    sender.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert len(answers[0].json()["predictions"]) == 32
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", replica.name).stdout.strip()
    assert exit_code == "0", f"killed, not drained: {replica.logs()[-2000:]}"
