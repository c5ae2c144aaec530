"""Every rendered object against its schema: Kubernetes' own kinds against the API of the oldest and
newest Kubernetes the manifests support (kubernetes-validate's packaged schemas), the custom
resources against their projects' published CRD schemas (deploy/kubernetes/crds/). Both reject
fields the schema does not declare, as `kubectl apply`'s strict field validation does."""

from __future__ import annotations

import json
from functools import cache

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import KUBERNETES, VARIANTS

# 1.30: the first release with the preStop `sleep` action on by default; 1.37: the newest the
# pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
CRDS = KUBERNETES / "crds"


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the stored schema, made strict."""
    schemas = {}
    for path in CRDS.glob("*.json"):
        stored = json.loads(path.read_text())
        schemas[stored["apiVersion"], stored["kind"]] = strict(stored["schema"])
    return schemas


def strict(schema: dict) -> dict:
    """`schema` with `additionalProperties: false` wherever it lists properties and neither allows
    unknown fields (`x-kubernetes-preserve-unknown-fields`) nor says what they may be."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(value) for value in schema]
    return schema


def validate_custom(item: dict) -> None:
    schema = crd_schemas().get((item["apiVersion"], item["kind"]))
    assert schema is not None, f"no stored CRD schema for {item['apiVersion']} {item['kind']} in {CRDS}"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(item), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def validate(item: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(item, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:  # not a Kubernetes kind: a custom resource
        validate_custom(item)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{item['kind']} {item['metadata']['name']}: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", [*VARIANTS, "overlays/cpu+keda"])
def test_every_object_matches_its_schema(rendered, variant, version):
    for item in rendered[variant]:
        validate(item, version)


def test_the_secret_example_matches_its_schema():
    item = yaml.safe_load((KUBERNETES / "base" / "secret.example.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        validate(item, version)


def test_every_stored_crd_schema_is_used(rendered):
    """The custom resources shipped are exactly those with a stored schema."""
    custom = set()
    for objects in rendered.values():
        for item in objects:
            try:
                kubernetes_validate.validate(item, KUBERNETES_VERSIONS[-1], strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                custom.add((item["apiVersion"], item["kind"]))
    assert custom == set(crd_schemas())


@pytest.mark.parametrize("field, value", [
    ("spec.predictor.model.runtimee", "graft"),  # a misspelt field
    ("spec.predictor.minReplicas", "two"),  # a wrong type
])
def test_crd_validation_catches_mistakes(rendered, field, value):
    """The stored schemas are not vacuous: a typo or a wrong type in an InferenceService fails."""
    item = json.loads(json.dumps(next(i for i in rendered["kserve"] if i["kind"] == "InferenceService")))
    *parents, last = field.split(".")
    holder = item
    for key in parents:
        holder = holder[key]
    holder[last] = value
    with pytest.raises(AssertionError, match=last):
        validate_custom(item)
