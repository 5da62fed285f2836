"""Image input: load images, read lists of captioned images, generate digit strings and text lines.

A dataset folder (written by :func:`make_digits` and :func:`make_textlines`; a user's own data
has the same layout without boxes and manifest)::

    OUT/images/{split}/{i:06d}.png   grayscale PNG; split in train, dev, test
    OUT/{split}.tsv                  "images/{split}/000000.png<TAB>text" (paths relative to OUT)
    OUT/{split}.boxes.jsonl          one JSON object per image: {"boxes": [[x0, y0, x1, y1], ...]}
    OUT/manifest.json                what was made and from what

A box is one character of the text in its PNG's pixel coordinates, ints with x0 <= x < x1 and
y0 <= y < y1 (a space in a text line has its advance box). Digit lines also record
``"glyphs"`` (each digit's index in scikit-learn's ``load_digits``), text lines ``"font"``.
Generation is deterministic by seed: the same arguments on the same installation (Pillow,
scikit-learn, fonts) give byte-identical files. A folder is written whole or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import shutil
import string
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

from .. import __version__
from ..errors import AttendoError, UsageError
from .corpus import (
    CorpusError,
    ReadReport,
    TextError,
    clean_text,
    decode_line,
    raw_lines,
    read_lines,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "dev", "test")
MANIFEST = "manifest.json"
MADE_BY = "attendo.data.images"  # the manifest's mark of a folder this module may replace
DEFAULT_HELD_OUT_FONT = "DejaVu Serif"

# Adobe glyph names of printable ASCII (letters are their own), with the typographic variants
# some fonts use. A font whose glyph for a character has another name does not hold it, whatever
# its character map says (matplotlib's cm* math fonts map "a" to arrows, LastResort to a box).
_ASCII_GLYPHS = {chr(c): {n} for c, n in zip(
    [*range(0x20, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F)],
    ("space exclam quotedbl numbersign dollar percent ampersand quotesingle parenleft parenright "
     "asterisk plus comma hyphen period slash zero one two three four five six seven eight nine "
     "colon semicolon less equal greater question at bracketleft backslash bracketright "
     "asciicircum underscore grave braceleft bar braceright asciitilde").split())}
_ASCII_GLYPHS |= {c: {c} for c in string.ascii_letters}
for _c, _alt in zip("'`-^~", ("quoteright", "quoteleft", "minus", "circumflex", "tilde")):
    _ASCII_GLYPHS[_c].add(_alt)


def load_image(path: str | Path, height: int, channels: int = 1, max_width: int = 2048,
               max_pixels: int = 40_000_000) -> np.ndarray:
    """The image at ``path`` as uint8 (channels, height, W): grayscale (``channels=1``) or RGB
    (3), transparency on white, EXIF orientation applied, resized to ``height`` keeping the
    aspect ratio (W = max(1, round(w * height / h)), capped at ``max_width``). A missing,
    unreadable, truncated or empty image, or one of more than ``max_pixels`` pixels (judged by
    the header, before decoding: a decompression bomb), is a :class:`CorpusError`."""
    if channels not in (1, 3) or min(height, max_width, max_pixels) < 1:
        raise UsageError(f"load_image: expected channels 1 or 3 and height, max_width, "
                         f"max_pixels >= 1, got {channels}, {height}, {max_width}, {max_pixels}")
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, None, ("is a directory" if path.is_dir() else "file not found")
                          + ", expected an image file")
    opened = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                opened = True
                w, h = im.size
                if w * h > max_pixels:
                    raise CorpusError(path, None, f"image of {w}x{h} = {w * h} pixels, more than "
                                      f"the limit of {max_pixels} (a decompression bomb?)")
                if w == 0 or h == 0:
                    raise CorpusError(path, None, f"empty image ({w}x{h} pixels)")
                im.load()
                im = ImageOps.exif_transpose(im)
    except CorpusError:
        raise
    except UnidentifiedImageError:
        raise CorpusError(path, None, "not an image (or a format Pillow cannot read); "
                          f"expected one of {' '.join(IMAGE_EXTS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CorpusError(path, None, f"refused as a possible decompression bomb ({e}); "
                          f"expected at most {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        problem = "truncated or corrupt image data" if opened else "cannot open"
        raise CorpusError(path, None, f"{problem} ({e}); expected a complete image file") from None
    return to_pixels(im, height, channels, max_width)


def to_pixels(im: Image.Image, height: int, channels: int, max_width: int) -> np.ndarray:
    """A decoded image (PIL) as uint8 (channels, height, W), see :func:`load_image`."""
    if im.mode.startswith("I;16"):  # 16-bit gray: keep the high byte (convert() would clip)
        im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    im = im.convert("L" if channels == 1 else "RGB")
    width = min(max_width, max(1, round(im.width * height / im.height)))
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BILINEAR)
    a = np.asarray(im)  # (height, W) or (height, W, 3)
    return np.ascontiguousarray(a[None] if channels == 1 else a.transpose(2, 0, 1))


def read_image_tsv(path: str | Path, skip_bad: bool = False
                   ) -> tuple[list[str], list[str], ReadReport]:
    """Read a list of captioned images: TSV lines ``image<TAB>text``, or JSONL lines
    ``{"image": ..., "text": ...}`` when the name ends in .jsonl (either may be gzip). Image
    paths are relative to the list file's folder (absolute ones kept); images are not decoded.
    A bad line (invalid UTF-8, control characters, not 2 columns, bad JSON or a missing key,
    empty text, an image not found or not ending in one of :data:`IMAGE_EXTS`) is a
    :class:`CorpusError` ``file:line: problem``, or with ``skip_bad`` counted in the report;
    an empty file or one without a usable line is an error. Returns (image paths, texts,
    report)."""
    path = Path(path)
    jsonl = path.name.lower().removesuffix(".gz").endswith(".jsonl")
    images, texts, report = [], [], ReadReport(n_pairs=0, n_skipped=0)
    lineno = 0
    for lineno, raw in enumerate(raw_lines(path), start=1):
        try:
            image, text = _image_line(raw, path, lineno, jsonl)
        except CorpusError as e:
            if not skip_bad:
                raise
            report.skip(e)
            continue
        images.append(image)
        texts.append(text)
    if lineno == 0:
        form = '{"image": PATH, "text": TEXT}' if jsonl else "image<TAB>text"
        raise CorpusError(path, None, f"empty file, expected one {form} line per image")
    if not images:
        raise CorpusError(path, None, f"no usable line: all {lineno} lines were skipped as "
                          f"bad; the first: {report.problems[0]}")
    report.n_pairs = len(images)
    return images, texts, report


def _image_line(raw: bytes, path: Path, lineno: int, jsonl: bool) -> tuple[str, str]:
    """One line of :func:`read_image_tsv` as (image path, text), or a :class:`CorpusError`."""
    line = decode_line(raw, path, lineno)
    if jsonl:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno}); "
                              'expected {"image": PATH, "text": TEXT}') from None
        if not (isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in ("image",
                                                                                  "text"))):
            raise CorpusError(path, lineno, 'expected a JSON object with the strings "image" '
                              'and "text"')
        image, text = obj["image"], obj["text"]
    else:
        cols = line.split("\t")
        if len(cols) != 2:
            raise CorpusError(path, lineno, f"found {len(cols)} tab-separated columns, expected "
                              "exactly 2 (image<TAB>text)")
        image, text = cols
    try:  # a TSV line is checked already (decode_line), JSON strings may hold escaped controls
        image, text = clean_text(image), clean_text(text)
    except TextError as e:
        raise CorpusError(path, lineno, e.problem) from None
    if not text:
        raise CorpusError(path, lineno, "empty text, expected the image's text")
    if not image.lower().endswith(IMAGE_EXTS):
        raise CorpusError(path, lineno, f"image {image!r} does not end in an image extension "
                          f"(expected one of {' '.join(IMAGE_EXTS)})")
    file = path.parent / image  # an absolute image path stays as it is
    if not file.is_file():
        raise CorpusError(path, lineno, f"image file {str(file)!r} not found (relative paths "
                          "are relative to the list file's folder)")
    return str(file), text


def digit_pools(seed: int = 0, n: int = 1797) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays into the ``n`` glyphs of ``load_digits``, 80/10/10 for
    train/dev/test by a permutation seeded with ``seed``: no test glyph is seen in training."""
    perm = np.random.default_rng([seed, 31]).permutation(n)
    a, b = round(0.8 * n), round(0.9 * n)
    return {"train": np.sort(perm[:a]), "dev": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def make_digits(out: str | Path, n_train: int = 6000, n_dev: int = 500, n_test: int = 500,
                seed: int = 0, min_len: int = 1, max_len: int = 8, height: int = 16,
                test_lengths: list[int] | None = None) -> dict:
    """Write a dataset folder (see the module docstring) of handwritten digit strings composed
    from scikit-learn's UCI digits (1,797 8x8 glyphs, 16 gray levels, in its wheel), each split
    from its own glyph pool (:func:`digit_pools`). A string has ``min_len`` to ``max_len``
    digits, each scaled to 0.8-1.0 x ``height`` at a random height, with gaps of 0-0.5 glyph
    widths; black ink on white, light noise. ``test_lengths``: the test strings' lengths are
    drawn from this list instead (e.g. 3 5 8 12 16: length generalization in one test set).
    Returns the manifest."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}
    counts = dict(zip(SPLITS, (n_train, n_dev, n_test)))
    if min(counts.values()) < 1 or not 1 <= min_len <= max_len or height < 4 or (
            test_lengths is not None and (not test_lengths or min(test_lengths) < 1)):
        raise UsageError("make_digits: expected n_train, n_dev, n_test >= 1, 1 <= min_len <= "
                         f"max_len and height >= 4, got {args}")
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise AttendoError("make_digits needs scikit-learn (its wheel holds the UCI digits): "
                           "pip install 'attendo[images]'") from None
    digits = load_digits()
    glyphs = np.rint(255 - digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), ink dark
    pools = digit_pools(seed, len(glyphs))

    def line(rng: np.random.Generator, pool: np.ndarray, test: bool):  # -> (image, text, boxes)
        n = rng.choice(test_lengths) if test and test_lengths else rng.integers(min_len, max_len + 1)
        idx = rng.choice(pool, size=int(n))
        sizes = [max(1, round(height * s)) for s in rng.uniform(0.8, 1.0, len(idx))]
        gaps = [int(rng.integers(0, s // 2 + 1)) for s in sizes]  # before each glyph
        canvas = np.full((height, sum(sizes) + sum(gaps) + sizes[-1] // 4), 255, np.uint8)
        boxes, x = [], 0
        for g, s, gap in zip(idx, sizes, gaps):
            x += gap
            y = int(rng.integers(0, height - s + 1))
            tile = Image.fromarray(glyphs[g]).resize((s, s), Image.Resampling.BILINEAR)
            canvas[y : y + s, x : x + s] = np.asarray(tile)
            boxes.append([x, y, x + s, y + s])
            x += s
        img = np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).round().astype(np.uint8)
        text = "".join(str(digits.target[g]) for g in idx)
        return img, text, {"boxes": boxes, "glyphs": idx.tolist()}

    source = {"data": "UCI optdigits (sklearn.datasets.load_digits), CC BY 4.0",
              "sklearn": sklearn.__version__, "pillow": PIL.__version__,
              "glyphs_per_pool": {s: len(p) for s, p in pools.items()}}
    return _write_dataset(out, "digits", args, counts, source, lambda split, rng: (
        line(rng, pools[split], split == "test") for _ in range(counts[split])))


def make_textlines(out: str | Path, text_file: str | Path, n_train: int = 4000, n_dev: int = 300,
                   n_test: int = 300, seed: int = 0, height: int = 32, max_chars: int = 40,
                   held_out_font: str | None = None) -> dict:
    """Write a dataset folder (see the module docstring) of real sentences rendered as text
    lines. The lines of ``text_file`` (whitespace runs made one space, cut at a word boundary
    to at most ``max_chars``, empty ones and repeats dropped), shuffled by ``seed``, are split
    into disjoint train/dev/test sentences (used again in turn when fewer than the images).
    Fonts: matplotlib's, then the system's, each face once, only those with a real glyph for
    every character. Augmented: size and position, letter spacing, slant, blur, gray levels,
    noise. The family (or face) ``held_out_font`` (default DejaVu Serif, else the first family
    found) stays out of train and dev: even-numbered test images use it, odd ones the training
    fonts (each boxes line names its ``"font"``). Returns the manifest (``source.fonts``)."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}
    counts = dict(zip(SPLITS, (n_train, n_dev, n_test)))
    if min(counts.values()) < 1 or height < 8 or max_chars < 1:
        raise UsageError("make_textlines: expected n_train, n_dev, n_test >= 1, height >= 8 and "
                         f"max_chars >= 1, got {args}")
    lines = read_lines(text_file)
    sentences = list(dict.fromkeys(s for s in (_cut(t, max_chars) for t in lines) if s))
    np.random.default_rng([seed, 7]).shuffle(sentences)
    if len(sentences) < 3:
        raise CorpusError(text_file, None, f"{len(sentences)} distinct non-empty lines, expected "
                          "at least 3 (one sentence per line) for train, dev and test")
    sizes = dict(counts)
    if len(sentences) < sum(counts.values()):  # too few: split them in proportion
        sizes = {s: max(1, len(sentences) * counts[s] // sum(counts.values())) for s in SPLITS}
        sizes["train"] = len(sentences) - sizes["dev"] - sizes["test"]
    bounds = np.cumsum([0, *sizes.values()])
    pools = {s: sentences[bounds[k] : bounds[k + 1]] for k, s in enumerate(SPLITS)}
    fonts = _usable_fonts(set("".join(sentences)) | {" "})
    want = (held_out_font or DEFAULT_HELD_OUT_FONT).lower()
    held = [n for n, (fam, _) in fonts.items() if want in (n.lower(), fam.lower())]
    if not held and held_out_font:
        raise UsageError(f"held_out_font {held_out_font!r} is not a usable font family or face; "
                         f"found: {', '.join(fonts)}")
    if not held and fonts:
        first = next(iter(fonts.values()))[0]
        held = [n for n, (fam, _) in fonts.items() if fam == first]
    seen = [n for n in fonts if n not in held]
    if not seen:
        raise AttendoError(f"found {len({fam for fam, _ in fonts.values()})} font families with "
                           f"a glyph for every character of {text_file}, expected two or more "
                           "(one is held out for testing)")

    def samples(split: str, rng: np.random.Generator) -> Iterable[tuple[np.ndarray, str, dict]]:
        for i in range(counts[split]):
            choices = held if split == "test" and i % 2 == 0 else seen
            font = choices[int(rng.integers(len(choices)))]
            text = pools[split][i % len(pools[split])]
            img, boxes = _render_line(rng, text, fonts[font][1], height)
            yield img, text, {"boxes": boxes, "font": font}

    sha = hashlib.sha256(Path(text_file).read_bytes()).hexdigest()
    source = {"text_file": str(text_file), "lines": len(lines), "sha256": sha,
              "sentences": {s: len(p) for s, p in pools.items()}, "pillow": PIL.__version__,
              "fonts": {"train": seen, "dev": seen, "test": held + seen},
              "held_out_fonts": held, "font_files": {n: str(p) for n, (_, p) in fonts.items()}}
    return _write_dataset(out, "textlines", args, counts, source, samples)


def _cut(text: str, max_chars: int) -> str:
    """``text`` with single spaces, cut at the last space within ``max_chars`` (or mid-word)."""
    text = " ".join(text.split())
    cut = text[: max_chars + 1].rfind(" ") if len(text) > max_chars else len(text)
    return text[:cut] if cut > 0 else text[:max_chars]


def _usable_fonts(chars: set[str]) -> dict[str, tuple[str, Path]]:
    """Face name ("DejaVu Serif Bold") -> (family, file) of each font Pillow can scale that has
    a glyph for every one of ``chars``: matplotlib's bundled fonts, then the system's as
    matplotlib finds them, each face once, in a fixed order."""
    import matplotlib
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    bundled = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))
    system = sorted(Path(p) for p in font_manager.findSystemFonts(fontext="ttf"))
    fonts: dict[str, tuple[str, Path]] = {}
    for file in bundled + system:
        try:
            ft = FT2Font(str(file))
            _font(str(file), 20)
        except (OSError, RuntimeError, ValueError):
            continue  # not a scalable font Pillow and FreeType read (e.g. a color bitmap font)
        name = f"{ft.family_name} {ft.style_name}"
        if name not in fonts and _has_glyphs(ft, chars):
            fonts[name] = (ft.family_name, file)
    return fonts


def _has_glyphs(ft, chars: set[str]) -> bool:
    """Whether the FT2Font ``ft`` maps each of ``chars`` to a glyph (ASCII: of the right name,
    or unnamed: uniXXXX)."""
    cmap = ft.get_charmap()
    for ch in chars:
        gid = cmap.get(ord(ch))
        name = ft.get_glyph_name(gid) if gid and ch in _ASCII_GLYPHS else ""
        if not gid or (name and name not in _ASCII_GLYPHS[ch] and not name.startswith("uni")):
            return False
    return True


@functools.lru_cache(maxsize=256)
def _font(file: str, size: int) -> ImageFont.FreeTypeFont:
    """A font at a pixel size, laid out the same on every installation (no raqm)."""
    return ImageFont.truetype(file, size, layout_engine=ImageFont.Layout.BASIC)


def _render_line(rng: np.random.Generator, text: str, file: Path, height: int
                 ) -> tuple[np.ndarray, list[list[int]]]:
    """``text`` in the font ``file``, augmented, as uint8 (height, W) and one box per char."""
    size = int(rng.integers(2 * height, 3 * height))  # drawn large, scaled down to height
    font = _font(str(file), size)
    spacing = rng.uniform(-0.03, 0.12) * size
    ascent, descent = font.getmetrics()
    pen = [font.getlength(text[:i]) + i * spacing for i in range(len(text) + 1)]  # x of each char
    ink = [font.getbbox(ch) for ch in text]  # (left, top, right, bottom) from the pen, y down
    top, bottom = min(0, *(b[1] for b in ink)), max(ascent + descent, *(b[3] for b in ink))
    shear = rng.uniform(-0.25, 0.25)
    pad_top, pad_bottom = (int(p) for p in rng.uniform(0.05, 0.4, 2) * size)  # text size varies
    h = pad_top + bottom - top + pad_bottom
    ox = int(0.15 * size + abs(shear) * h / 2) - min(0, *(b[0] for b in ink))  # pen origin
    oy = pad_top - top
    w = int(np.ceil(ox + max(pen[-1] - spacing, *(p + b[2] for p, b in zip(pen, ink))))) + ox
    paper, ink_gray = int(rng.integers(215, 256)), int(rng.integers(0, 70))
    img = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(img)
    for ch, x in zip(text, pen):
        draw.text((ox + x, oy), ch, fill=ink_gray, font=font)
    # x -> x - shear * (y - h/2): leaning right for shear > 0
    img = img.transform((w, h), Image.Transform.AFFINE, (1, shear, -shear * h / 2, 0, 1, 0),
                        resample=Image.Resampling.BILINEAR, fillcolor=paper)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.03) * size))
    width = max(1, round(w * height / h))
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    noisy = np.asarray(img) + rng.normal(0, rng.uniform(0, 8), (height, width))
    y0, y1 = oy + top, oy + bottom
    lean = sorted((-shear * (y0 - h / 2), -shear * (y1 - h / 2)))
    boxes = np.array([[ox + min(x, x + b[0]) + lean[0], y0,
                       ox + max(pen[i + 1] - spacing, x + b[2]) + lean[1], y1]
                      for i, (x, b) in enumerate(zip(pen, ink))]) * ([width / w, height / h] * 2)
    # the smallest pixel boxes [x0, y0, x1, y1) holding them, inside the image, >= 1 px wide
    lo = np.clip(np.floor(boxes[:, :2]), 0, [width - 1, height - 1])
    hi = np.clip(np.ceil(boxes[:, 2:]), lo + 1, [width, height])
    img = np.clip(noisy, 0, 255).round().astype(np.uint8)
    return img, np.hstack([lo, hi]).astype(int).tolist()


def _write_split(root: Path, split: str, samples: Iterable[tuple[np.ndarray, str, dict]]) -> None:
    """Write the PNGs, ``{split}.tsv`` and ``{split}.boxes.jsonl`` of (uint8 (H, W) image,
    text, boxes line) samples."""
    (root / "images" / split).mkdir(parents=True)
    tsv, boxes = [], []
    for i, (img, text, extra) in enumerate(samples):
        name = f"images/{split}/{i:06d}.png"
        Image.fromarray(img).save(root / name)
        tsv.append(f"{name}\t{text}\n")
        boxes.append(json.dumps(extra, ensure_ascii=False) + "\n")
    (root / f"{split}.tsv").write_text("".join(tsv), encoding="utf-8")
    (root / f"{split}.boxes.jsonl").write_text("".join(boxes), encoding="utf-8")


def _write_dataset(out: str | Path, kind: str, args: dict, counts: dict, source: dict,
                   samples: Callable[[str, np.random.Generator], Iterable]) -> dict:
    """Write each split's ``samples(split, rng)`` (rng seeded by the seed and the split's index)
    and the manifest in a temporary sibling ``OUT.tmp-XXXX``, then put the folder in place of
    ``out``, replacing one this module made (and nothing else). Returns the manifest."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        try:
            ours = out.is_dir() and json.loads((out / MANIFEST).read_text())["made_by"] == MADE_BY
        except (OSError, ValueError, TypeError, KeyError):
            ours = False
        if not ours:
            raise UsageError(f"{out}: exists and is not a dataset folder made by attendo (no "
                             f"{MANIFEST} of ours); expected a new path, or such a folder to "
                             "replace")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
    tmp.mkdir()
    try:
        for k, split in enumerate(SPLITS):
            _write_split(tmp, split, samples(split, np.random.default_rng([args["seed"], k])))
        manifest = {"made_by": MADE_BY, "kind": kind, "counts": counts, "seed": args["seed"],
                    "arguments": args, "source": source, "attendo": __version__}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)  # the earlier folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return manifest

