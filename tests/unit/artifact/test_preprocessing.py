"""`artifact.preprocessing.preprocess` reproduces the libraries' own eval transforms on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torchvision
from timm.data import create_transform, resolve_data_config

from graft.artifact.preprocessing import PreprocessingSpec, crop, normalize, preprocess, preprocess_batch
from graft.models.backbones import get_backbone

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")  # landscape and square, several sizes


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_matches_timm_eval_transform(photos, name):
    transform = create_transform(**resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(name).to_dict()))
    spec = get_backbone(name).preprocessing
    for photo in PHOTO_NAMES:
        expected = transform(photos[photo]).numpy()
        np.testing.assert_allclose(preprocess(photos[photo], spec), expected, atol=1e-6, err_msg=photo)


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny"])
def test_matches_torchvision_weights_transform(photos, name):
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    spec = get_backbone(name).preprocessing
    for photo in PHOTO_NAMES:
        expected = transform(photos[photo]).numpy()
        np.testing.assert_allclose(preprocess(photos[photo], spec), expected, atol=1e-6, err_msg=photo)


def test_portrait_and_greyscale_inputs(photos):
    spec = get_backbone("tf_efficientnet_lite0").preprocessing
    portrait = photos["chelsea"].transpose(0)  # 300x451 -> taller than wide
    assert preprocess(portrait, spec).shape == (3, 224, 224)
    grey = preprocess(photos["coffee"].convert("L"), spec)
    assert grey.dtype == np.float32
    np.testing.assert_array_equal(grey[0], grey[1])  # 'L' becomes greyscale on all three channels


def test_batch_stacks_and_handles_empty(photos):
    spec = get_backbone("tf_efficientnet_lite0").preprocessing
    batch = preprocess_batch([photos["chelsea"], photos["coffee"]], spec)
    assert batch.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], preprocess(photos["coffee"], spec))
    assert preprocess_batch([], spec).shape == (0, 3, 224, 224)


def test_crop_then_batch_normalize_is_preprocess(photos):
    """The service's split (uint8 crop in the API process, normalize per batch in the inference
    worker) gives exactly `preprocess`'s arrays."""
    spec = get_backbone("resnet18").preprocessing  # ImageNet mean/std: not the trivial 0.5s
    pixels = np.stack([crop(photos[name], spec) for name in PHOTO_NAMES])
    assert pixels.dtype == np.uint8 and pixels.shape == (len(PHOTO_NAMES), 224, 224, 3)
    batch = normalize(pixels, spec)
    assert batch.dtype == np.float32 and batch.shape == (len(PHOTO_NAMES), 3, 224, 224)
    np.testing.assert_array_equal(batch, preprocess_batch([photos[name] for name in PHOTO_NAMES], spec))
    # ... and the same values as the textbook formula on the HWC array, to the bit.
    direct = (pixels[0].astype(np.float32) / np.float32(255) - np.float32(spec.mean)) / np.float32(spec.std)
    np.testing.assert_array_equal(batch[0], direct.transpose(2, 0, 1))


@pytest.mark.parametrize("pixels", [np.zeros((224, 224, 3), np.float32), np.zeros((224, 224), np.uint8),
                                    np.zeros((3, 224, 224), np.uint8)])
def test_normalize_rejects_what_is_not_uint8_rgb(pixels):
    with pytest.raises(ValueError, match=r"expected uint8 pixels of shape \[..., H, W, 3\]"):
        normalize(pixels, get_backbone("resnet18").preprocessing)


def test_spec_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="resize_size"):
        PreprocessingSpec(input_size=(224, 224), resize_size=200)
    with pytest.raises(ValueError, match="std"):
        PreprocessingSpec(input_size=(224, 224), resize_size=256, std=(0.5, 0.0, 0.5))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "nearest"])
def test_crop_is_torchvisions_resize_and_centre_crop_to_the_bit(photos, interpolation):
    """`crop` resizes in two calls with the dropped columns cut between them: the pixels must be
    those of torchvision's Resize + CenterCrop (one Pillow resize, then the crop), exactly."""
    spec = PreprocessingSpec(input_size=(224, 224), resize_size=256, interpolation=interpolation)
    mode = getattr(torchvision.transforms.InterpolationMode, interpolation.upper())
    reference = torchvision.transforms.Compose([torchvision.transforms.Resize(256, interpolation=mode),
                                                torchvision.transforms.CenterCrop(224)])
    for name in PHOTO_NAMES:
        photo = photos[name]
        # landscape, portrait, upscaled (224 px), downscaled (2000 px), odd sizes
        for image in (photo, photo.transpose(0), photo.resize((337, 224)), photo.resize((224, 301)),
                      photo.resize((2000, 1333)), photo.resize((257, 256)), photo.resize((256, 256))):
            expected = np.asarray(reference(image))
            np.testing.assert_array_equal(crop(image, spec), expected, err_msg=f"{name} {image.size}")
