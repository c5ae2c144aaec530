"""The head store on the tiny synthetic artifacts: binding to the right backbone, persistence across a restart,
atomic replace, delete, limits, names that can't escape the heads directory, `--head` heads."""

from __future__ import annotations

import numpy as np
import pytest

from graft.artifact.heads import HeadError, Provenance, make_head, now, write_head
from graft.artifact.manifest import read_manifest
from graft.service.errors import BadRequest, Conflict, NotConfigured, NotFound
from graft.service.heads import HeadStore

LABELS = ("boot", "shirt", "trouser")


@pytest.fixture(scope="module")
def backbones(tiny_classifier, tiny_embedder):
    manifests = [read_manifest(tiny_classifier), read_manifest(tiny_embedder)]
    return {m.name: m for m in manifests}


@pytest.fixture(scope="module")
def classifier(backbones):
    return next(name for name, m in backbones.items() if m.task == "classifier")


@pytest.fixture(scope="module")
def embedder(backbones):
    return next(name for name, m in backbones.items() if m.task == "embedder")


def random_head(name, manifest, seed=0, labels=LABELS):
    rng = np.random.default_rng(seed)
    dim = manifest.embedding_dim
    provenance = Provenance(source="api", num_images=6, images_per_class={label: 2 for label in labels},
                            accuracy=0.5, accuracy_method="stratified 2-fold cross-validation", created_at=now())
    return make_head(name, labels, weight=rng.normal(size=(len(labels), dim)), bias=rng.normal(size=len(labels)),
                     mean=rng.normal(size=dim), scale=rng.uniform(0.5, 2, size=dim), backbone=manifest,
                     provenance=provenance)


def store_on(directory, backbones, max_heads=10):
    store = HeadStore(directory, max_heads=max_heads)
    store.load(backbones)
    return store


def visible(directory):
    return sorted(p.name for p in directory.iterdir())


def test_put_serves_at_once_and_survives_a_restart(tmp_path, backbones, classifier, embedder):
    store = store_on(tmp_path / "heads", backbones)
    on_classifier = random_head("shoes", backbones[classifier], seed=1)
    on_embedder = random_head("shirts", backbones[embedder], seed=2)
    assert store.put(on_classifier, classifier, overwrite=False) == tmp_path / "heads" / "shoes"
    store.put(on_embedder, embedder, overwrite=False)
    served = store.get("shoes")
    assert served.head is on_classifier and served.backbone == classifier
    head, backbone = store.get("shirts")
    assert backbone == embedder and store.get("nothing") is None
    assert [name for name, _ in store.items()] == ["shirts", "shoes"] and len(store) == 2 and "shoes" in store

    restarted = store_on(tmp_path / "heads", backbones)
    bound = [(name, served.backbone) for name, served in restarted.items()]
    assert bound == [("shirts", embedder), ("shoes", classifier)]
    reloaded = restarted.get("shoes").head
    assert reloaded.spec == on_classifier.spec
    embeddings = np.random.default_rng(0).normal(size=(4, backbones[classifier].embedding_dim)).astype(np.float32)
    np.testing.assert_array_equal(reloaded.apply(embeddings), on_classifier.apply(embeddings))
    assert visible(tmp_path / "heads") == ["shirts", "shoes"]  # no temp dirs left


def test_summary(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones)
    head = random_head("shoes", backbones[classifier])
    store.put(head, classifier, overwrite=False)
    summary = store.summary("shoes")
    assert summary == {
        "name": "shoes", "backbone": classifier, "backbone_version": backbones[classifier].version,
        "num_labels": 3, "labels": list(LABELS), "source": "api", "run": None, "num_images": 6,
        "images_per_class": {label: 2 for label in LABELS}, "accuracy_estimate": 0.5,
        "accuracy_method": "stratified 2-fold cross-validation", "version": head.spec.version,
        "created_at": head.spec.provenance.created_at,
    }
    with pytest.raises(NotFound) as caught:
        store.summary("boots")
    assert "shoes" in caught.value.expected


def test_a_head_for_a_backbone_not_served_refuses_to_load(tmp_path, backbones, classifier, embedder):
    write_head(tmp_path / "shirts", random_head("shirts", backbones[embedder]))
    store = HeadStore(tmp_path, max_heads=10)
    with pytest.raises(HeadError) as caught:
        store.load({classifier: backbones[classifier]})
    message = str(caught.value)
    ref = backbones[embedder]
    for part in ("shirts", ref.name, ref.sha256["model"][:12], classifier, "not served"):
        assert part in message
    assert len(store) == 0


def test_binds_by_hash_not_by_name(tmp_path, backbones, classifier, embedder):
    """The same artifact served under another name still carries its heads; the same name with other
    weights does not."""
    write_head(tmp_path / "shoes", random_head("shoes", backbones[classifier]))
    renamed = store_on(tmp_path, {"tiny-prod": backbones[classifier], embedder: backbones[embedder]})
    assert renamed.get("shoes").backbone == "tiny-prod"
    with pytest.raises(HeadError, match="not served"):
        store_on(tmp_path, {classifier: backbones[embedder]})


def test_overwrite_is_atomic_and_conflicts_without_it(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones)
    old = random_head("shoes", backbones[classifier], seed=1)
    store.put(old, classifier, overwrite=False)
    in_flight = store.get("shoes").head  # what a request already running holds
    new = random_head("shoes", backbones[classifier], seed=2)
    with pytest.raises(Conflict) as caught:
        store.put(new, classifier, overwrite=False)
    assert caught.value.status == 409 and "overwrite" in caught.value.expected
    assert store.get("shoes").head is old
    store.put(new, classifier, overwrite=True)
    assert store.get("shoes").head is new and in_flight is old
    embeddings = np.ones((1, old.spec.embedding_dim), np.float32)
    assert in_flight.apply(embeddings).shape == (1, 3)  # the old head still works for that request
    assert visible(tmp_path) == ["shoes"]
    assert store_on(tmp_path, backbones).get("shoes").head.spec.version == new.spec.version


def test_delete(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones)
    store.put(random_head("shoes", backbones[classifier]), classifier, overwrite=False)
    store.put(random_head("bags", backbones[classifier]), classifier, overwrite=False)
    store.delete("shoes")
    assert store.get("shoes") is None and visible(tmp_path) == ["bags"]
    with pytest.raises(NotFound):
        store.delete("shoes")
    assert [name for name, _ in store_on(tmp_path, backbones).items()] == ["bags"]


def test_head_limit_counts_new_names_only(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones, max_heads=2)
    for name in ("a1", "a2"):
        store.put(random_head(name, backbones[classifier]), classifier, overwrite=False)
    with pytest.raises(BadRequest, match="at most 2 heads"):
        store.put(random_head("a3", backbones[classifier]), classifier, overwrite=False)
    store.put(random_head("a2", backbones[classifier], seed=5), classifier, overwrite=True)
    assert visible(tmp_path) == ["a1", "a2"]
    store.delete("a1")
    store.put(random_head("a3", backbones[classifier]), classifier, overwrite=False)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "Shoes", "", "x" * 65, "a b", "/etc"])
def test_names_that_could_escape_or_hide_are_refused(tmp_path, backbones, classifier, name):
    store = store_on(tmp_path / "heads", backbones)
    with pytest.raises(BadRequest) as caught:
        store.check_put(name, classifier, overwrite=True)
    assert caught.value.status == 400 and "a head name matching" in caught.value.expected
    assert visible(tmp_path) == []  # nothing created, inside or outside the heads directory


def test_served_model_names_are_reserved(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones)
    with pytest.raises(BadRequest, match="not a served model"):
        store.put(random_head(classifier, backbones[classifier]), classifier, overwrite=True)
    write_head(tmp_path / classifier, random_head(classifier, backbones[classifier]))
    with pytest.raises(HeadError, match="not a served model"):
        store_on(tmp_path, backbones)


def test_no_heads_directory_means_read_only(backbones, classifier):
    store = store_on(None, backbones)
    with pytest.raises(NotConfigured) as caught:  # 501: a server setting, not the client's mistake
        store.put(random_head("shoes", backbones[classifier]), classifier, overwrite=False)
    assert "set GRAFT_HEADS_DIR" in caught.value.message


def test_unknown_backbone(tmp_path, backbones, classifier):
    store = store_on(tmp_path, backbones)
    with pytest.raises(NotFound) as caught:
        store.check_put("shoes", "resnet50", overwrite=False)
    assert classifier in caught.value.expected


def test_load_skips_hidden_entries_and_files_but_not_junk_directories(tmp_path, backbones, classifier):
    write_head(tmp_path / "shoes", random_head("shoes", backbones[classifier]))
    (tmp_path / ".shoes.partial-1234abcd").mkdir()  # a write cut short
    (tmp_path / "README.txt").write_text("heads live here")
    assert [name for name, _ in store_on(tmp_path, backbones).items()] == ["shoes"]
    (tmp_path / "notes").mkdir()
    with pytest.raises(HeadError, match="notes"):
        store_on(tmp_path, backbones)


def test_a_copied_head_directory_is_served_under_its_directory_name(tmp_path, backbones, classifier):
    write_head(tmp_path / "shoes-v2", random_head("shoes", backbones[classifier]))
    store = store_on(tmp_path, backbones)
    assert store.get("shoes-v2").head.name == "shoes-v2" and store.get("shoes") is None


def test_operator_heads_are_served_but_not_changed_through_the_api(tmp_path, backbones, classifier):
    operator_dir = tmp_path / "mine" / "pets"
    write_head(operator_dir, random_head("pets", backbones[classifier]))
    store = HeadStore(tmp_path / "heads", max_heads=10)
    store.add("animals", operator_dir, backbones)
    store.load(backbones)
    assert store.get("animals").backbone == classifier
    with pytest.raises(Conflict, match="--head"):
        store.put(random_head("animals", backbones[classifier]), classifier, overwrite=True)
    with pytest.raises(Conflict, match="--head"):
        store.delete("animals")
    assert (operator_dir / "head.json").is_file()
    with pytest.raises(HeadError, match="second"):
        store.add("animals", operator_dir, backbones)


def test_a_second_store_follows_what_the_first_writes(tmp_path, backbones, classifier, embedder):
    """Two workers (or replicas) on one heads directory: `sync` serves what the other fitted,
    replaced or deleted, and a head that fails to read leaves the served version in place."""
    one, two = store_on(tmp_path, backbones), store_on(tmp_path, backbones)
    first = random_head("shoes", backbones[classifier], seed=1)
    one.put(first, classifier, overwrite=False)
    assert two.get("shoes") is None
    two.sync()
    assert two.get("shoes").backbone == classifier
    np.testing.assert_array_equal(two.get("shoes").head.arrays["weight"], first.arrays["weight"])

    second = random_head("shoes", backbones[embedder], seed=2)
    one.put(second, embedder, overwrite=True)
    two.sync()
    assert two.get("shoes").backbone == embedder
    np.testing.assert_array_equal(two.get("shoes").head.arrays["weight"], second.arrays["weight"])
    before = two.get("shoes")
    two.sync()
    assert two.get("shoes") is before, "an unchanged head is not read again"

    (tmp_path / "shoes" / "weights.npz").write_bytes(b"torn")
    two.sync()
    assert two.get("shoes") is before, "a head that does not read keeps the served version"

    one.put(random_head("boots", backbones[classifier], seed=3), classifier, overwrite=False)
    one.delete("boots")
    two.sync()
    assert two.get("boots") is None


def test_a_deleted_head_stops_being_served_after_two_scans(tmp_path, backbones, classifier):
    one = store_on(tmp_path, backbones)
    one.put(random_head("shoes", backbones[classifier]), classifier, overwrite=False)
    two = store_on(tmp_path, backbones)
    one.delete("shoes")
    two.sync()
    assert two.get("shoes") is not None, "one scan without it may be a replacement under way"
    two.sync()
    assert two.get("shoes") is None and "shoes" not in two
