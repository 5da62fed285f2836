"""Images for an image model's ``/translate`` (``model.encoder: image``): base64 in JSON ->
checked, decoded in memory -> the picture as the model reads it, and the region grid each
attention row lies on. Every problem is a :class:`RequestError` naming ``"image"``: invalid
base64 or a non-image or truncated one a 422, one over ``max_image_bytes`` (decoded) or
``max_image_pixels`` (judged by its header, before decoding: a decompression bomb) a 413."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import TYPE_CHECKING

from ..data.prepare import ImageCodec
from .limits import RequestError, ServeLimits

if TYPE_CHECKING:  # Pillow is optional (attendo[images]); image models need it
    from PIL.Image import Image

# what Pillow may open: the usual raster formats, never one that runs a program (EPS runs
# Ghostscript) or that few clients write
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
EXPECTED = f"expected an image file ({', '.join(FORMATS)})"


def base64_size(n_bytes: int) -> int:
    """Characters of the base64 of ``n_bytes`` bytes (padded)."""
    return 4 * -(-n_bytes // 3)


def is_image_model(translator) -> bool:
    return isinstance(translator.src, ImageCodec)


def decode_base64(value: str, what: str, limits: ServeLimits) -> bytes:
    """Strict base64 (the standard alphabet, padded, no whitespace) -> bytes; at most
    ``max_image_bytes`` decoded, judged before decoding."""
    if not value:
        raise RequestError(422, f"{what}: empty; {EXPECTED}, base64-encoded")
    if len(value) > base64_size(limits.max_image_bytes):
        raise RequestError(413, f"{what}: about {len(value) * 3 // 4} bytes; at most "
                                f"{limits.max_image_bytes} (max_image_bytes)")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as e:
        raise RequestError(422, f"{what}: not valid base64 ({e}); {EXPECTED}, base64-encoded "
                                "(standard alphabet, padded, no line breaks)") from None
    if len(data) > limits.max_image_bytes:
        raise RequestError(413, f"{what}: {len(data)} bytes; at most {limits.max_image_bytes} "
                                "(max_image_bytes)")
    return data


def decode_image(data: bytes, what: str, limits: ServeLimits, codec: ImageCodec) -> Image:
    """An image file's bytes -> the picture as ``codec`` feeds the model (scaled to its height,
    gray or RGB, transparency on white, EXIF orientation applied), as a PIL image."""
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    from ..data.images import to_pixels

    opened = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data), formats=FORMATS) as im:  # the header only
                opened = True
                w, h = im.size
                if w * h > limits.max_image_pixels:
                    raise RequestError(413, f"{what}: {w}x{h} = {w * h} pixels; at most "
                                            f"{limits.max_image_pixels} (max_image_pixels: a "
                                            "decompression bomb?)")
                if w == 0 or h == 0:
                    raise RequestError(422, f"{what}: an empty image ({w}x{h} pixels)")
                im.load()
                im = ImageOps.exif_transpose(im)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(422, f"{what}: not an image, or not one of the formats read here; "
                                f"{EXPECTED}") from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
        raise RequestError(413, f"{what}: refused as a possible decompression bomb ({e}); at "
                                f"most {limits.max_image_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        problem = "truncated or corrupt image data" if opened else "cannot be opened"
        raise RequestError(422, f"{what}: {problem} ({e}); {EXPECTED}, complete") from None
    pixels = to_pixels(im, codec.height, codec.channels, codec.max_width)  # (C, H, W)
    return PILImage.fromarray(pixels[0] if codec.channels == 1 else pixels.transpose(1, 2, 0))


def image_reader(codec: ImageCodec, limits: ServeLimits):
    """The ``images`` callable of :func:`parse_request` for a model reading ``codec``'s images:
    base64 strings -> PIL images, each problem a RequestError naming the image."""
    def read(values: list[str]) -> list[Image]:
        many = len(values) > 1
        out = []
        for i, value in enumerate(values):
            what = f'"image" {i}' if many else '"image"'
            out.append(decode_image(decode_base64(value, what, limits), what, limits, codec))
        return out

    return read


def region_grid(translator, image: Image) -> dict:
    """Where the attention weights of an image (as the model reads it) lie: ``{"rows", "cols",
    "cell": [h, w], "pixels": [H, W]}``: entry k of an attention row is region (k % rows,
    k // rows), pixels [r*h, r*h + h) x [c*w, c*w + w) of the H x W picture (clipped)."""
    encoder = translator.model.encoder
    width, height = image.size
    rows, cols = encoder.grid_shape(height, width)
    side = 2 ** encoder.pools
    return {"rows": rows, "cols": cols,
            "cell": [height if encoder.rnn_kind in ("columns", "conv") else side, side],
            "pixels": [height, width]}


def add_grids(translator, records: list[dict], images: list) -> None:
    """Each image's :func:`region_grid` into its record, as ``"grid"``."""
    for rec, image in zip(records, images):
        if not isinstance(image, str):  # an image model's input (a path has no grid here)
            rec["grid"] = region_grid(translator, image)


def estimate_image_response_bytes(images: list[Image], translator, outputs: int,
                                  attention: bool, per_hyp: int = 1, best_extra: int = 0) -> int:
    """An estimate (on the low side, as :func:`estimate_response_bytes`) of the answer for
    ``images``: as if each output were 2 symbols, 4 bytes per attention weight."""
    total = 0
    for image in images:
        grid = region_grid(translator, image)
        regions, t = grid["rows"] * grid["cols"], 2
        cells = (outputs * per_hyp + best_extra) * t * regions if attention else 0
        total += 120 + outputs * (4 * t + 40) + 4 * cells
    return total

