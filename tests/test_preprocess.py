"""Tests for dwlt_tf.preprocess: torchvision-exact crops, decoding only the crop window."""
import glob
import io
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image
from scipy import stats

from conftest import BUNDLED_CIFAR
from dwlt_tf import preprocess

N = 20000


def _torchvision_get_params(height, width, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, rule for rule, on torch's RNG
    (torchvision itself is not installable beside this torch build)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = math.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w, False
    return (*_torchvision_fallback(height, width, ratio), True)


def _torchvision_fallback(height, width, ratio=(3 / 4, 4 / 3)):
    """get_params's central crop when no attempt fits."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _torch_boxes(height, width):
    generator = torch.Generator().manual_seed(0)
    return np.array([_torchvision_get_params(height, width, generator) for _ in range(N)],
                    np.float64)


@tf.function
def _our_boxes(height, width):
    seeds = tf.stack([tf.range(N, dtype=tf.int64), tf.fill([N], tf.constant(7, tf.int64))], 1)
    return tf.map_fn(lambda s: preprocess.random_resized_crop_box(height, width, s), seeds,
                     fn_output_signature=tf.int32, parallel_iterations=64)


@tf.function
def _old_tf_boxes(height, width):
    """What dwlt_tf used before: tf.image's sampler, which is not torchvision's."""
    def one(seed):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3], bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        return tf.stack([begin[0], begin[1], size[0], size[1]])
    seeds = tf.stack([tf.range(N, dtype=tf.int64), tf.fill([N], tf.constant(7, tf.int64))], 1)
    return tf.map_fn(one, seeds, fn_output_signature=tf.int32, parallel_iterations=64)


def _summary(boxes, height, width):
    top, left, h, w = (boxes[:, k].astype(np.float64) for k in range(4))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (h > 0).all()
    return h * w / (height * width), np.log(w / h), top / np.maximum(height - h, 1)


def _fallback(boxes, height, width):
    """Share of boxes that are the fallback box (a fitting attempt rarely equals it)."""
    return np.mean(np.all(boxes[:, :4] == np.array(_torchvision_fallback(height, width)),
                          axis=1))


@pytest.mark.parametrize("height,width", [(350, 400), (100, 1000), (1000, 120)])
def test_crop_boxes_follow_torchvision_distribution(height, width):
    reference = _torch_boxes(height, width)
    ours = _our_boxes(height, width).numpy()
    old = _old_tf_boxes(height, width).numpy()
    ref_area, ref_ratio, ref_top = _summary(reference, height, width)
    area, ratio, top = _summary(ours, height, width)
    # Kolmogorov-Smirnov on area fraction, log aspect ratio and vertical position.
    for mine, theirs in ((area, ref_area), (ratio, ref_ratio), (top, ref_top)):
        assert stats.ks_2samp(mine, theirs).pvalue > 1e-3
    np.testing.assert_allclose(np.quantile(area, [0.1, 0.5, 0.9]),
                               np.quantile(ref_area, [0.1, 0.5, 0.9]), atol=0.02)
    # Fallback (no attempt fits): the same rate, the same centred box.
    fallback_ref = reference[:, 4].mean()
    fallback = _fallback(ours, height, width)
    assert abs(fallback - fallback_ref) < 4 * math.sqrt(max(fallback_ref, 1e-3) / N) + 1e-3
    if width / height > 2:  # a very wide image: the fallback is common
        assert fallback_ref > 0.3
    # The same test rejects the sampler dwlt_tf used before (tf.image's).
    old_area, old_ratio, _ = _summary(old, height, width)
    assert min(stats.ks_2samp(old_area, ref_area).pvalue,
               stats.ks_2samp(old_ratio, ref_ratio).pvalue) < 1e-6


def test_crop_decodes_only_the_window_and_matches_a_full_decode():
    rng = np.random.default_rng(0)
    pixels = (rng.random((350, 400, 3)) * 255).astype(np.uint8)
    smooth = np.array(Image.fromarray(pixels[::25, ::25]).resize((400, 350), Image.BICUBIC))
    for image in (pixels, smooth):  # noise: the hardest case for chroma upsampling
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        jpeg = tf.constant(buffer.getvalue())
        full = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        for box in ([40, 60, 200, 150], [41, 61, 200, 151], [0, 0, 350, 400], [7, 250, 90, 150]):
            top, left, height, width = box
            window = preprocess.decode_window(jpeg, "x.jpg", tf.constant(box)).numpy()
            assert window.shape == (height, width, 3)
            np.testing.assert_array_equal(window, full[top:top + height, left:left + width])
    # Why one column more on each side: decoded alone, a window's last column lacks its
    # (undecoded) neighbour for libjpeg's horizontal chroma upsampling (measured here:
    # up to 2 grey levels on the smooth picture, more on noise).
    bare = tf.image.decode_and_crop_jpeg(jpeg, [40, 60, 200, 150], channels=3,
                                         dct_method=preprocess.DCT_METHOD).numpy()
    edge = np.abs(bare[:, -1].astype(int) - full[40:240, 209].astype(int)).max()
    assert 0 < edge <= 4 and (bare[:, :-1] == full[40:240, 60:209]).all()
    png = tf.io.encode_png(pixels)
    np.testing.assert_array_equal(preprocess.decode_window(png, "x.png", [40, 60, 200, 150]),
                                  pixels[40:240, 60:210])
    assert tuple(preprocess.image_shape(jpeg).numpy()) == (350, 400)


def _pillow_resize_center_crop(data, size=224):
    """torchvision's Resize(256) + CenterCrop(224) on the PIL image, as uint8."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    short = int(round(size * 256 / 224))
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    image = image.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _jpegs_at(sizes):
    """Bundled CIFAR-10 test JPEGs re-encoded at ImageNet-like sizes (q90)."""
    files = sorted(glob.glob(os.path.join(BUNDLED_CIFAR, "test", "*", "*.jpg")))
    out = []
    for i, path in enumerate(files[:len(sizes) * 6]):
        image = Image.open(path).convert("RGB").resize(sizes[i % len(sizes)], Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _close_to(ours, theirs):
    diff = np.abs(np.round(ours * 255.0) - theirs.astype(np.float64))
    return diff.max(), diff.mean()


def test_decoding_the_bundled_jpegs_gives_pillows_pixels():
    files = sorted(glob.glob(os.path.join(BUNDLED_CIFAR, "*", "*", "*.jpg")))[::10]
    for path in files:
        data = open(path, "rb").read()
        ours = preprocess.decode(tf.constant(data), path).numpy()
        np.testing.assert_array_equal(ours, np.asarray(Image.open(path).convert("RGB")),
                                      err_msg=path)


def test_resize_256_center_crop_224_matches_pillow():
    worst, means = 0.0, []
    for data in _jpegs_at([(400, 300), (300, 500), (256, 256), (500, 333), (224, 180)]):
        ours = preprocess.eval_imagenet(tf.constant(data), "x.jpg", 224).numpy()
        largest, mean = _close_to(ours, _pillow_resize_center_crop(data))
        worst, means = max(worst, largest), means + [mean]
    assert worst <= 1 and np.mean(means) < 0.1, (worst, np.mean(means))


def test_random_resized_crop_with_fixed_boxes_matches_pillow():
    worst, means = 0.0, []
    for i, data in enumerate(_jpegs_at([(400, 300), (500, 333), (300, 500)])):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = image.size
        rng = np.random.default_rng(i)
        for _ in range(3):  # crops that shrink, enlarge, keep one side
            h, w = int(rng.integers(20, height)), int(rng.integers(20, width))
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            theirs = np.asarray(image.crop((left, top, left + w, top + h)).resize(
                (224, 224), Image.BILINEAR))
            ours = preprocess.resized_crop(tf.constant(data), "x.jpg",
                                           tf.constant([top, left, h, w]), 224).numpy()
            largest, mean = _close_to(ours, theirs)
            worst, means = max(worst, largest), means + [mean]
    assert worst <= 1 and np.mean(means) < 0.1, (worst, np.mean(means))


@pytest.mark.parametrize("height,width,resized", [(300, 400, (256, 341)), (500, 375, (341, 256)),
                                                  (224, 224, (256, 256)), (257, 700, (256, 697))])
def test_eval_is_torchvision_resize_then_center_crop(height, width, resized):
    # A ramp image: the crop's corner value tells where the crop starts.
    ramp = np.broadcast_to(np.arange(width, dtype=np.float64)[None, :, None] % 256,
                           (height, width, 3)).astype(np.uint8)
    out = preprocess.resize_center_crop(tf.constant(ramp), 224).numpy()
    assert out.shape == (224, 224, 3)
    # torchvision: short side 256, long side int(256 * long / short), then the centre crop
    # (Pillow's own pixels; the ramp's values tell where the crop starts).
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    theirs = _pillow_resize_center_crop(buffer.getvalue())
    assert np.abs(np.round(out * 255.0) - theirs).max() <= 1
    del resized
