"""Decoding and preprocessing: the one place where bytes become pixels and pixels become model input.

Training and serving both call :func:`preprocess` (or its two halves, :func:`resize_for_model` and
:func:`to_unit_range`), so the tensors they feed the network cannot drift apart. Also the one definition of what
several places need about images: the format by content (:func:`sniff_format`, :func:`media_type`), which files are
images (:func:`iter_image_files`), capping the longest side (:func:`cap_longest_side`) and the stain basis.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# --- the numbers (one place) -------------------------------------------------------------------------------------
IMAGE_SIZE = 128  # Table 4 input: 128 x 128 x 3
MIN_SIDE = 32  # smaller images carry too little to analyse
MAX_PIXELS = 50_000_000  # decompression-bomb guard, checked on the header before decoding
MAX_BYTES = 20 * 2**20  # per image file (CLI and web; web: $LEUKOSTAGE_MAX_FILE_BYTES)
MAX_REQUEST_BYTES = 64 * 2**20  # per HTTP request of several files (web: $LEUKOSTAGE_MAX_REQUEST_BYTES)
# Background level of a bright-field smear: the empty slide is the brightest part of the picture and covers far more
# than 10 % of any field, so each channel's 90th percentile estimates it without segmentation (used by the model's
# colour normalisation and the training-time stain mask).
BACKGROUND_QUANTILE = 0.9
BACKGROUND_LEVEL = 0.9  # where colour normalisation puts each channel's background level (a light neutral grey)
MIN_BACKGROUND_LEVEL = 0.02  # a (near-)black channel is scaled as if its background were this dark, not divided by 0
SUPPORTED_FORMATS = ("jpeg", "png", "tiff", "bmp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# Optical-density colours of three stains (Ruifrok & Johnston; scikit-image's rgb_from_hed), rows haematoxylin, eosin,
# DAB: light through a stain of density d leaves I = I0 exp(-d x row) (Beer-Lambert). A generic mixing basis for
# jittering and rendering stains, not a Giemsa model.
STAIN_BASIS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAIN_BASIS.flags.writeable = False


class ImageError(ValueError):
    """An input that cannot become an RGB image; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    animated: bool = False


# --- format sniffing (by content, never by extension) --------------------------------------------------------------
def sniff_format(data: bytes) -> str | None:
    """Name the container format from its magic bytes, or None when it is not an image we know."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def media_type(data: bytes) -> str:
    """The HTTP media type of image bytes by their content (``image/png``); ``application/octet-stream`` for anything
    but the accepted formats."""
    fmt = sniff_format(data)
    return f"image/{fmt}" if fmt in SUPPORTED_FORMATS else "application/octet-stream"


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(endian + "I", data[4:8])
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack(endian + "H", data[offset : offset + 2])
    dims: dict[int, int] = {}
    for k in range(count):
        entry = data[offset + 2 + 12 * k : offset + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, typ = struct.unpack(endian + "HH", entry[:4])
        if tag in (256, 257):
            fmt = "H" if typ == 3 else "I"
            (dims[tag],) = struct.unpack(endian + fmt, entry[8 : 8 + struct.calcsize(fmt)])
    if 256 in dims and 257 in dims:
        return dims[256], dims[257]
    return None


def read_header(data: bytes) -> Header:
    """Read format and size from the header alone, so huge images are refused before any pixel is decoded.

    Raises:
        ImageError: ``unreadable`` (empty or not an image), ``unsupported_format`` (a known but unsupported
            container), ``too_large`` / ``too_small`` (by the declared size).
    """
    if not data:
        raise ImageError("unreadable", "The file is empty.")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(
            "unreadable",
            "The file is not an image this tool can read (its content is not JPEG, PNG, TIFF or BMP).",
        )
    animated = False
    if fmt == "gif":
        animated = data.count(b"\x21\xf9\x04") > 1
    if fmt in ("gif", "webp"):
        kind = "an animated GIF" if animated else fmt.upper()
        raise ImageError(
            "animated" if animated else "unsupported_format",
            f"The file is {kind}; accepted formats are JPEG, PNG, TIFF and BMP (a single still image).",
        )
    size: tuple[int, int] | None = None
    try:
        if fmt == "jpeg":
            size = _jpeg_size(data)
        elif fmt == "png":
            size = struct.unpack(">II", data[16:24])
            chunk_area = data[: data.find(b"IDAT")] if b"IDAT" in data else data
            animated = b"acTL" in chunk_area
        elif fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            size = (abs(w), abs(h))
        elif fmt == "tiff":
            size = _tiff_size(data)
    except struct.error:
        size = None
    if size is None:
        raise ImageError("unreadable", f"The {fmt.upper()} header is damaged; the image cannot be read.")
    if animated:
        raise ImageError("animated", "The file is an animated PNG; upload a single still image.")
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            "too_large",
            f"The image is {width}x{height} pixels; at most {MAX_PIXELS // 1_000_000} megapixels are accepted.",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            "too_small", f"The image is {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels."
        )
    return Header(fmt, width, height)


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation tag (1-8) of a JPEG, 1 when absent."""
    i = 2
    while i + 4 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            tiff = data[i + 10 : i + 2 + length]
            endian = "<" if tiff[:2] == b"II" else ">"
            try:
                (offset,) = struct.unpack(endian + "I", tiff[4:8])
                (count,) = struct.unpack(endian + "H", tiff[offset : offset + 2])
                for k in range(count):
                    entry = tiff[offset + 2 + 12 * k : offset + 14 + 12 * k]
                    tag, _, _, value = struct.unpack(endian + "HHIH", entry[:10])
                    if tag == 0x0112:
                        return value if 1 <= value <= 8 else 1
            except struct.error:
                return 1
            return 1
        if marker == 0xDA:  # start of scan: no more metadata
            break
        i += 2 + length
    return 1


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.transpose(a, (1, 0, 2)),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a[:, ::-1], 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(rgb)) if op else rgb


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes into an 8-bit RGB array (H, W, 3), whatever the depth, channels or EXIF orientation.

    Greyscale is replicated to three channels, alpha is composited over white, 16-bit is scaled to 8-bit.

    Raises:
        ImageError: see :func:`read_header`; also ``unreadable`` when the pixel data is corrupt.
    """
    header = read_header(data)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageError("unreadable", f"The {header.format.upper()} data is corrupt or truncated.")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        arr = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    if arr.ndim == 2:
        rgb = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    elif arr.shape[2] == 4:
        bgr = arr[:, :, :3].astype(np.float32)
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        bgr = bgr * alpha + 255.0 * (1.0 - alpha)
        rgb = cv2.cvtColor(np.round(bgr).astype(np.uint8), cv2.COLOR_BGR2RGB)
    elif arr.shape[2] == 1:
        rgb = cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2RGB)
    else:
        rgb = cv2.cvtColor(arr[:, :, :3], cv2.COLOR_BGR2RGB)
    if header.format == "jpeg":
        rgb = _apply_orientation(rgb, _exif_orientation(data))
    return rgb


def read_bytes(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """Read a file for decoding, refusing missing paths, folders and oversized files with a clear message."""
    p = Path(path)
    try:
        if not p.exists():
            if p.is_symlink():
                raise ImageError("unreadable", f"{p} is a broken symbolic link (to {os.readlink(p)}, now missing).")
            raise ImageError("unreadable", f"No such file: {p}")
        if p.is_dir():
            raise ImageError("unreadable", f"{p} is a folder, not an image file.")
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the reader or never end
            raise ImageError("unreadable", f"{p} is not a regular file (a pipe, socket or device); give an image file.")
        if st.st_size > max_bytes:
            raise ImageError("too_large", size_limit_message(st.st_size, max_bytes))
        return p.read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", f"Cannot read {p}: {exc.strerror or exc}.") from exc


def mebibytes(n: int) -> str:
    """A byte count in binary units, as every size message says it: "20 MiB", "21.4 MiB", "512 KiB"."""
    if n < 2**20:
        return f"{max(1, round(n / 2**10))} KiB"
    return f"{n / 2**20:.1f}".removesuffix(".0") + " MiB"


def size_limit_message(size: int | None, limit: int, what: str = "file") -> str:
    """The one message for a size limit, CLI and web alike: which limit (per ``what``: file or request), the size,
    the limit, what to do. ``size`` None: not known yet (a streamed body), only that it is over.

    >>> size_limit_message(22_400_000, 20 * 2**20)
    'The file is 21.4 MiB; at most 20 MiB are accepted per file. Send a smaller image (e.g. re-save it as JPEG).'
    """
    advice = (
        "Send a smaller image (e.g. re-save it as JPEG)."
        if what == "file"
        else "Send fewer files per request, in several requests."
    )
    if size is None:
        return f"The {what} is larger than {mebibytes(limit)}, the most accepted per {what}. {advice}"
    shown, most = mebibytes(size), mebibytes(limit)
    if shown == most:  # just over: rounding would hide the difference
        shown, most = f"{size:,} bytes", f"{limit:,} bytes ({most})"
    return f"The {what} is {shown}; at most {most} are accepted per {what}. {advice}"


def load_image(path: str | Path) -> np.ndarray:
    """Read and decode a file into 8-bit RGB."""
    return decode_image(read_bytes(path))


# --- listing image files (one discovery for batch, the CLI verbs, training data and calibration) -------------------
def is_image_name(name: str) -> bool:
    """By extension only: the content is checked when the file is read, and a misnamed file becomes a coded refusal."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def iter_image_files(root: str | Path, skipped: Callable[[str], None] | None = None) -> Iterator[tuple[str, str]]:
    """The image files under the folder ``root``, at any depth, lazily: ``(path, folder relative to root)`` with
    ``"."`` for ``root`` itself.

    Depth first, names sorted per directory, so the first files come long before a million-file tree is listed and
    memory holds one listing per open level. Hidden entries are skipped; a directory is entered once (loops, and two
    links to one folder, are not walked twice); an unlistable sub-folder is passed over. Files that are not images by
    name are passed to ``skipped`` (their path), if given.
    """
    yield from _walk(str(root), ".", set(), skipped)


def _walk(
    root: str, rel: str, seen: set[tuple[int, int]], skipped: Callable[[str], None] | None
) -> Iterator[tuple[str, str]]:
    here = os.path.join(root, rel) if rel != "." else root
    try:
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(here) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
    except OSError:
        return  # an unlistable sub-folder: its parent still gives everything else
    for name in names:
        path = os.path.join(here, name)
        child = name if rel == "." else f"{rel}/{name}"
        if os.path.isdir(path):  # follows symlinks: a linked folder is walked (once)
            yield from _walk(root, child, seen, skipped)
        elif is_image_name(name):  # regular files, links (broken ones too), FIFOs...: reading decides
            yield path, rel
        elif skipped is not None:
            skipped(path)


# --- preprocessing (shared by training and inference) -------------------------------------------------------------
def resize_for_model(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize 8-bit RGB to the network's square input; area interpolation when shrinking avoids aliasing."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_unit_range(rgb_uint8: np.ndarray) -> np.ndarray:
    """Scale 8-bit pixels to float32 in [0, 1] (Table 3: rescale 1/255)."""
    return rgb_uint8.astype(np.float32) / np.float32(255.0)


def capped_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled down so the longest side is at most ``max_side`` (never scaled up)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def cap_longest_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image at most ``max_side`` pixels on its longest side (area interpolation), or itself when smaller."""
    h, w = capped_size(*rgb.shape[:2], max_side)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def preprocess(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The model input for one image: (size, size, 3) float32 in [0, 1], channels last (as in the paper)."""
    return to_unit_range(resize_for_model(rgb, size))
