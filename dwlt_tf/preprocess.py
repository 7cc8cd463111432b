"""Image decoding and the reference's (torchvision's) transforms, as TensorFlow ops.

Every function takes *encoded* image bytes (JPEG or PNG) and decodes only what it needs:

* `train_imagenet`: torchvision's `RandomResizedCrop(size)` (scale (0.08, 1), ratio
  (3/4, 4/3): area fraction uniform, log aspect ratio uniform, 10 attempts, then the
  centre-crop fallback -- `random_resized_crop_box` reproduces `get_params` rule for
  rule) + `RandomHorizontalFlip`. A JPEG is decoded only inside the crop window
  (`tf.image.decode_and_crop_jpeg`, as TF Model Garden's ImageNet input does).
* `eval_imagenet`: torchvision's `Resize(round(size * 256 / 224))` (shorter side; the
  longer one truncated as torchvision does) + `CenterCrop(size)` (offsets rounded
  half-to-even like Python's round).
* `train_cifar` / `eval_cifar`: `RandomCrop(size, padding=4)` + flip / identity.

Pixels are torchvision's (PIL's): JPEGs decode with libjpeg's accurate integer DCT as
PIL does (TF's default fast DCT differs by up to 4 grey levels); a crop window is decoded
with one column more on each side, so its pixels are the full decode's; bilinear resizes
run PIL's two passes (horizontal, then vertical, antialiased when shrinking), each
rounded to uint8 as PIL rounds 8-bit images. Measured against Pillow itself
(tests/test_preprocess.py): decoding identical; Resize(256) + CenterCrop(224) and
RandomResizedCrop with fixed boxes within 1 grey level, mean difference < 0.001.

Randomness is stateless: each call gets its own seed (an int64 [2] tensor), so a given
(seed, epoch, example) always gets the same crop and flip. Outputs are float32 in [0, 1].

A file cut short, an empty file or one that is not a JPEG/PNG fails with an
InvalidArgumentError naming it (`check_complete`), which `data.unreadable_images_named`
turns into `data.CorruptImageError`.
"""
import math

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

UNREADABLE = "dwlt_tf: unreadable image file (truncated, empty or not a JPEG/PNG):"
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10


def _contains_bytes(data, pattern):
    """Whether the uint8 vector `data` contains the byte string `pattern` (no zero bytes)."""
    n = len(pattern)
    data = tf.concat([data, tf.zeros([n], tf.uint8)], 0)  # any length, even empty
    length = tf.shape(data)[0]
    hits = [tf.equal(data[i:length - (n - 1 - i)], byte) for i, byte in enumerate(pattern)]
    return tf.reduce_any(tf.reduce_all(tf.stack(hits), axis=0))


def check_complete(encoded, name):
    """An assertion that `encoded` is a whole JPEG (end-of-image marker near its end) or
    PNG (IEND chunk near its end); `name` (the file) is in the failure's message.

    Catches the usual damage -- a file cut short by an interrupted copy or download, an
    empty file, something that is not an image -- from bytes already read, before the
    decoder fails without saying which file it was decoding.
    """
    head = tf.strings.substr(encoded, 0, 8)
    start = tf.maximum(tf.strings.length(encoded) - 1024, 0)
    tail = tf.io.decode_raw(tf.strings.substr(encoded, start, 1024), tf.uint8)
    jpeg = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8"),
                          _contains_bytes(tail, b"\xff\xd9"))
    png = tf.logical_and(tf.equal(head, b"\x89PNG\r\n\x1a\n"), _contains_bytes(tail, b"IEND"))
    return tf.debugging.Assert(tf.logical_or(jpeg, png), [UNREADABLE, name])


# libjpeg's accurate integer DCT, as PIL (torchvision's loader) decodes: the same pixels.
# TF's default (the fast integer DCT) differs from PIL by up to 4 grey levels.
DCT_METHOD = "INTEGER_ACCURATE"


def decode(encoded, name):
    """The whole image, uint8 [H, W, 3] (JPEG pixels as PIL decodes them)."""
    with tf.control_dependencies([check_complete(encoded, name)]):
        image = tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT_METHOD),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def image_shape(encoded):
    """(height, width) without decoding the pixels of a JPEG."""
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.io.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(tf.io.decode_image(encoded, channels=3,
                                                       expand_animations=False))[:2])


def _jpeg_window(encoded, box):
    """libjpeg decodes a window's edge columns without their neighbours: its chroma
    upsampling then differs from a full decode by up to a few grey levels there (measured:
    2). One more column on each side (inside the image) makes the window's pixels those of
    the full decode (tests/test_preprocess.py), for two columns' worth of work."""
    top, left, height, width = box[0], box[1], box[2], box[3]
    image_width = tf.io.extract_jpeg_shape(encoded)[1]
    first = tf.maximum(left - 1, 0)
    last = tf.minimum(left + width + 1, image_width)
    wider = tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, first, height, last - first]),
                                          channels=3, dct_method=DCT_METHOD)
    return wider[:, left - first:left - first + width]


def decode_window(encoded, name, box):
    """The crop `box` = (top, left, height, width) of the image, uint8 [h, w, 3]; a JPEG
    is decoded only inside it (and one column around), with the full decode's pixels."""
    with tf.control_dependencies([check_complete(encoded, name)]):
        image = tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: _jpeg_window(encoded, box),
            lambda: tf.slice(tf.io.decode_image(encoded, channels=3, expand_animations=False),
                             [box[0], box[1], 0], [box[2], box[3], 3]))
    image.set_shape([None, None, 3])
    return image


def random_resized_crop_box(height, width, seed, scale=SCALE, ratio=RATIO,
                            attempts=ATTEMPTS):
    """torchvision's `RandomResizedCrop.get_params` as stateless TF ops.

    Each attempt draws the target area as `area * U(scale)` and the aspect ratio as
    `exp(U(log ratio))`, rounds w = sqrt(area * r) and h = sqrt(area / r) half-to-even,
    and takes the first attempt that fits, at a uniformly drawn position; when none of
    `attempts` fits, the centre crop of the largest box with the ratio clamped into
    `ratio`. Returns int32 (top, left, crop height, crop width).
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    draws = tf.cast(tf.random.stateless_uniform([attempts, 2], seed), tf.float64)
    target = h_f * w_f * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[:, 1])
    crop_w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h, w = crop_h[first], crop_w[first]
    offsets = tf.random.stateless_uniform([2], seed + [0, 1], dtype=tf.float64)
    top = tf.cast(tf.floor(offsets[0] * tf.cast(height - h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(offsets[1] * tf.cast(width - w + 1, tf.float64)), tf.int32)
    # Fallback: the central crop with the aspect ratio clamped into `ratio`.
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width)
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
    found = tf.reduce_any(fits)
    h, w = tf.where(found, h, fb_h), tf.where(found, w, fb_w)
    top = tf.where(found, top, (height - h) // 2)
    left = tf.where(found, left, (width - w) // 2)
    return tf.stack([top, left, h, w])


def _to_float(image):
    return tf.cast(image, tf.float32) / 255.0


def _flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed=seed + [0, 2])


def _resize_pass(image, height, width):
    """One of PIL's separable resize passes (only one side changes), rounded to uint8
    values as PIL rounds 8-bit images after each pass (half up). Skipped, as in PIL, when
    the size does not change. When the side does not shrink, the antialiasing kernel is
    plain bilinear interpolation: the much faster plain kernel gives the same values."""
    hw = tf.shape(image)[:2]
    target = tf.stack([height, width])

    def resize():
        shrinks = tf.logical_or(hw[0] > height, hw[1] > width)
        resized = tf.cond(
            shrinks,
            lambda: tf.image.resize(image, target, method="bilinear", antialias=True),
            lambda: tf.image.resize(image, target, method="bilinear", antialias=False))
        return tf.clip_by_value(tf.floor(resized + 0.5), 0.0, 255.0)
    same = tf.logical_and(tf.equal(hw[0], height), tf.equal(hw[1], width))
    return tf.cond(same, lambda: tf.cast(image, tf.float32), resize)


def resize_bilinear(image, height, width):
    """PIL's (torchvision's) bilinear resize of uint8 [H, W, 3] to float32 [0, 1]:
    antialiased when shrinking; horizontal pass, then vertical, each rounded to uint8 as
    PIL does (tests/test_preprocess.py compares with Pillow itself)."""
    rows = tf.shape(image)[0]
    wide = _resize_pass(image, rows, width)
    return _resize_pass(wide, height, width) / 255.0


def resized_crop(encoded, name, box, size):
    """torchvision's resized_crop of PIL images: the crop `box` resized to size x size
    (float32 [0, 1]), decoding only the crop."""
    image = resize_bilinear(decode_window(encoded, name, box), size, size)
    image.set_shape([size, size, 3])
    return image


def train_imagenet(encoded, name, size, seed):
    """RandomResizedCrop(size) + RandomHorizontalFlip, decoding only the crop."""
    shape = image_shape(encoded)
    box = random_resized_crop_box(shape[0], shape[1], seed)
    return _flip(resized_crop(encoded, name, box, size), seed)


def resize_center_crop(image, size):
    """torchvision's Resize(round(size * 256 / 224)) + CenterCrop(size) of uint8 [H, W, 3]."""
    short = int(round(size * 256 / 224))
    hw = tf.shape(image)[:2]
    h, w = hw[0], hw[1]
    # torchvision: the shorter side becomes `short`, the longer int(short * long / short_in)
    # (a float64 division truncated, as Python computes it).
    def longer(long_side, short_side):
        ratio = tf.cast(short * long_side, tf.float64) / tf.cast(short_side, tf.float64)
        return tf.cast(tf.floor(ratio), tf.int32)
    new_h = tf.where(w <= h, longer(h, w), short)
    new_w = tf.where(w <= h, short, longer(w, h))
    resized = resize_bilinear(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return tf.clip_by_value(tf.slice(resized, [top, left, 0], [size, size, 3]), 0.0, 1.0)


def eval_imagenet(encoded, name, size):
    return resize_center_crop(decode(encoded, name), size)


def train_cifar(encoded, name, size, seed):
    """RandomCrop(size, padding=4) (zero padding) + RandomHorizontalFlip."""
    image = tf.image.resize_with_crop_or_pad(_to_float(decode(encoded, name)), size, size)
    image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.stateless_random_crop(image, (size, size, 3), seed=seed)
    return _flip(image, seed)


def eval_cifar(encoded, name, size):
    return center_or_pad(decode(encoded, name), size)


def center_or_pad(image, size):
    """The reference's 32-pixel evaluation: the image itself (cropped/padded to `size`)."""
    return tf.image.resize_with_crop_or_pad(_to_float(image), size, size)


def for_eval(image, size, augment):
    """The evaluation preprocessing of a decoded uint8 image (`augment`: imagenet|cifar)."""
    return resize_center_crop(image, size) if augment == "imagenet" else center_or_pad(
        image, size)
