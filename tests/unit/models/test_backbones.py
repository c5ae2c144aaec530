"""The backbone registry: every entry checked the same way; the offline Lite0 weights on real photos."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from graft.artifact.preprocessing import preprocess_batch
from graft.models.backbones import UnknownBackbone, get_backbone, image_backbone, imagenet_labels, list_backbones

ENTRIES = [entry for entry in list_backbones() if entry.modality == "image"]  # text: tests/unit/export/test_export_text.py
SMALL = {"tf_efficientnet_lite0", "mobilenet_v3_large", "resnet18"}  # cheap enough for real tensors
REQUIRED = {"tf_efficientnet_lite0", "tf_efficientnet_lite2", "resnet18", "resnet50", "mobilenet_v3_large",
            "vgg16", "convnext_tiny", "vit_b_16"}


def test_registry_has_the_promised_names():
    assert REQUIRED <= {entry.name for entry in ENTRIES}
    assert get_backbone("all-minilm-l6-v2").modality == "text"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_preprocessing_is_sane(entry):
    spec = entry.preprocessing
    height, width = spec.input_size
    assert 160 <= height <= 512 and height == width
    assert max(height, width) <= spec.resize_size <= 1.3 * max(height, width)
    assert all(0 < m < 1 for m in spec.mean) and all(0 < s <= 1 for s in spec.std)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_shapes_on_meta_device(entry):
    """Build without allocating (meta tensors): embedding dim, head, blocks, one forward's shapes."""
    with torch.device("meta"):
        backbone, source = entry.create(weights="none")
        imagenet_params = sum(p.numel() for p in backbone.parameters())
        backbone.reset_head(7)
        logits, embedding = backbone(torch.empty(2, 3, *entry.preprocessing.input_size))
    assert source.startswith("none")
    assert embedding.shape == (2, entry.embedding_dim) and logits.shape == (2, 7)
    assert backbone.num_classes == 7 and backbone.embedding_dim == entry.embedding_dim
    trunk_modules = {id(m) for m in backbone.trunk.modules()}
    assert backbone.blocks and all(id(block) in trunk_modules for block in backbone.blocks)
    assert len({id(block) for block in backbone.blocks}) == len(backbone.blocks)
    assert entry.num_params == imagenet_params  # as `graft backbones` reports: with the ImageNet head


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.name in SMALL], ids=lambda e: e.name)
def test_small_entry_forward_on_real_tensors(entry):
    torch.manual_seed(0)
    backbone, _ = entry.create(weights="none")
    backbone.eval()
    with torch.inference_mode():
        logits, embedding = backbone(torch.randn(1, 3, *entry.preprocessing.input_size))
        torch.testing.assert_close(backbone.head(embedding), logits)
    assert logits.shape == (1, 1000) and embedding.shape == (1, entry.embedding_dim)
    assert torch.isfinite(logits).all()


def test_image_only_paths_refuse_the_text_encoder():
    with pytest.raises(UnknownBackbone, match="expected an image backbone, got the text encoder 'all-minilm-l6-v2'"):
        image_backbone("all-minilm-l6-v2")
    assert image_backbone("resnet18").name == "resnet18"


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UnknownBackbone) as error:
        get_backbone("resnet19")
    message = str(error.value)
    assert "'resnet19'" in message and "tf_efficientnet_lite0" in message and "\n" not in message


def test_lite_weights_are_available_offline():
    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"):
        assert get_backbone(name).offline_weights() is not None


def test_lite0_top5_on_real_photos(photos):
    entry = get_backbone("tf_efficientnet_lite0")
    backbone, source = entry.create()
    assert "efficientnet-lite0" in source
    labels = imagenet_labels()
    batch = torch.from_numpy(preprocess_batch([photos["chelsea"], photos["coffee"]], entry.preprocessing))
    with torch.inference_mode():
        logits, _ = backbone.eval()(batch)
    top5 = [[labels[i] for i in row] for row in logits.topk(5).indices.tolist()]
    assert top5[0][0] in {"tabby, tabby cat", "tiger cat", "Egyptian cat"}, top5[0]
    assert "espresso" in top5[1], top5[1]
    probabilities = logits.softmax(1).numpy()
    assert np.all(probabilities.max(1) > 0.2)  # confident, not a near-uniform random head


def test_the_registry_names_and_refuses_backbones_without_importing_pytorch():
    # `graft train/export --backbone TYPO` is refused before seconds of PyTorch, timm and torchvision.
    code = ("import sys\nfrom graft.models.backbones import UnknownBackbone, get_backbone, list_backbones\n"
            "assert 'tf_efficientnet_lite0' in [e.name for e in list_backbones()]\n"
            "try:\n    get_backbone('nope')\n    sys.exit('nope was not refused')\nexcept UnknownBackbone:\n    pass\n"
            "sys.exit(sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)) or 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_refuses_an_unknown_backbone_in_one_line(capsys):
    from graft.cli import main

    assert main(["train", "--backbone", "nope", "--data", "fashion-mnist", "--strategy", "feature-extract",
                 "--out", "unused"]) != 0
    assert "unknown backbone 'nope'; expected one of:" in capsys.readouterr().err
