"""Layer 1 of the input gate: every decoding path, with crafted files (no fixtures on disk)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require

from leukostage.imaging import (
    MAX_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    ImageError,
    cap_longest_side,
    capped_size,
    decode_image,
    iter_image_files,
    load_image,
    media_type,
    preprocess,
    read_bytes,
    read_header,
    size_limit_message,
    sniff_format,
)


# --- builders -------------------------------------------------------------------------------------------------------
def encode(ext: str, arr: np.ndarray, params: list[int] | None = None) -> bytes:
    """Encode an RGB (or grey / BGRA-as-given) array with OpenCV; RGB is swapped to OpenCV's BGR."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, arr, params or [])
    assert ok
    return buf.tobytes()


def gradient(h: int = 60, w: int = 80) -> np.ndarray:
    """An RGB test card whose corners differ, so rotations and flips are visible."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, :, 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    img[: h // 4, : w // 4] = (255, 0, 0)  # a red top-left corner
    return img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims another size than its pixels: the header guard must act before decoding."""
    data = bytearray(encode(".png", gradient()))
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def apng() -> bytes:
    """A PNG with an animation-control chunk before the image data (an animated PNG)."""
    data = encode(".png", gradient())
    ihdr_end = 8 + 8 + 13 + 4
    return data[:ihdr_end] + png_chunk(b"acTL", struct.pack(">II", 2, 0)) + data[ihdr_end:]


def gif(frames: int) -> bytes:
    """A GIF from Pillow (scikit-image's dependency, in the test extra); several frames make it animated."""
    image = require("PIL.Image")
    imgs = [image.fromarray(np.full((40, 40, 3), 40 * k, np.uint8)) for k in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=frames > 1, append_images=imgs[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_app1(orientation: int, endian: str = ">") -> bytes:
    """An APP1 segment holding a one-entry EXIF IFD with the orientation tag (0x0112), built by hand."""
    order = b"MM" if endian == ">" else b"II"
    tiff = order + struct.pack(endian + "HI", 42, 8)
    tiff += struct.pack(endian + "H", 1) + struct.pack(endian + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(endian + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_orientation(rgb: np.ndarray, orientation: int, endian: str = ">") -> bytes:
    data = encode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return data[:2] + exif_app1(orientation, endian) + data[2:]


# --- format sniffing and header guard -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head, fmt",
    [
        (b"\xff\xd8\xff\xe0rest", "jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "png"),
        (b"II*\x00rest", "tiff"),
        (b"MM\x00*rest", "tiff"),
        (b"BMrest", "bmp"),
        (b"GIF89arest", "gif"),
        (b"GIF87arest", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"%PDF-1.7", None),
        (b"hello world", None),
        (b"", None),
    ],
)
def test_format_is_sniffed_from_content(head, fmt):
    assert sniff_format(head) == fmt


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "unreadable"),
        (b"this is a text file, not a photograph\n" * 20, "unreadable"),
        (b"%PDF-1.7\n" + b"0" * 400, "unreadable"),
        (b"\xff\xd8\xff" + b"\x00" * 200, "unreadable"),  # JPEG magic, no frame header
        (b"\x89PNG\r\n\x1a\n\x00\x00", "unreadable"),  # PNG magic, IHDR cut off
        (b"BM\x00", "unreadable"),  # BMP magic, header cut off
        (b"II*\x00\xff\xff\x00\x00", "unreadable"),  # TIFF whose first IFD lies beyond the file
    ],
    ids=["empty", "text", "pdf", "jpeg-no-sof", "png-cut-header", "bmp-cut-header", "tiff-bad-ifd"],
)
def test_damaged_or_foreign_bytes_are_unreadable(data, code):
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.code == code
    assert err.value.message


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda: gif(1), "unsupported_format"),
        (lambda: gif(3), "animated"),
        (lambda: encode(".webp", gradient()), "unsupported_format"),
        (apng, "animated"),
    ],
    ids=["gif", "animated-gif", "webp", "apng"],
)
def test_unsupported_and_animated_containers(make, code):
    with pytest.raises(ImageError) as err:
        read_header(make())
    assert err.value.code == code
    assert "JPEG, PNG, TIFF and BMP" in err.value.message or "still image" in err.value.message


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (60_000, 1_000), (MAX_PIXELS // 1000 + 1, 1000)])
def test_decompression_bomb_is_refused_from_the_header(width, height):
    with pytest.raises(ImageError) as err:
        decode_image(png_with_size(width, height))
    assert err.value.code == "too_large"
    assert f"{width}x{height}" in err.value.message


def test_too_large_jpeg_bmp_and_tiff_headers():
    jpeg = bytearray(encode(".jpg", gradient()))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    bmp = bytearray(encode(".bmp", gradient()))
    bmp[18:26] = struct.pack("<ii", 20_000, -20_000)  # negative height: top-down BMP
    entries = [struct.pack("<HHII", tag, 4, 1, 100_000) for tag in (256, 257)]  # LONG width and height
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + b"".join(entries) + struct.pack("<I", 0)
    for data in (bytes(jpeg), bytes(bmp), tiff):
        with pytest.raises(ImageError) as err:
            read_header(data)
        assert err.value.code == "too_large"


@pytest.mark.parametrize("h, w", [(16, 16), (MIN_SIDE - 1, 400), (400, MIN_SIDE - 1)])
def test_too_small(h, w):
    with pytest.raises(ImageError) as err:
        decode_image(encode(".png", np.zeros((h, w, 3), np.uint8)))
    assert err.value.code == "too_small"
    assert str(MIN_SIDE) in err.value.message


def test_truncated_and_corrupt_jpeg_are_unreadable():
    data = encode(".jpg", gradient(200, 300))
    for cut in (len(data) // 2, 400):
        with pytest.raises(ImageError) as err:
            decode_image(data[:cut])
        assert err.value.code == "unreadable"


def test_header_says_png_but_pixels_are_garbage():
    data = encode(".png", gradient())
    garbage = data[:33] + b"\x00\x00\x00\x10IDAT" + b"\x13" * 40
    with pytest.raises(ImageError) as err:
        decode_image(garbage)
    assert err.value.code == "unreadable"


# --- files ----------------------------------------------------------------------------------------------------------
def test_read_bytes_guards(tmp_path):
    with pytest.raises(ImageError, match="No such file") as err:
        read_bytes(tmp_path / "missing.jpg")
    assert err.value.code == "unreadable"
    with pytest.raises(ImageError, match="folder") as err:
        read_bytes(tmp_path)
    assert err.value.code == "unreadable"
    big = tmp_path / "big.png"
    big.write_bytes(b"\x00" * 2000)
    with pytest.raises(ImageError) as err:
        read_bytes(big, max_bytes=1000)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(
    "size, limit, what, text",
    [
        (22_400_000, 20 * 2**20, "file", "The file is 21.4 MiB; at most 20 MiB are accepted per file."),
        (
            20 * 2**20 + 1,
            20 * 2**20,
            "file",
            "The file is 20,971,521 bytes; at most 20,971,520 bytes (20 MiB) are accepted per file.",
        ),
        (70 * 2**20, 64 * 2**20, "request", "The request is 70 MiB; at most 64 MiB are accepted per request."),
        (None, 64 * 2**20, "request", "The request is larger than 64 MiB, the most accepted per request."),
        (2000, 1000, "file", "The file is 2 KiB; at most 1 KiB are accepted per file."),
    ],
)
def test_size_limit_message_says_which_limit_in_binary_units(size, limit, what, text):
    """One message for the CLI and the web app (issue 12: "21.0 MB; at most 21 MB" for a 20 MiB limit)."""
    message = size_limit_message(size, limit, what)
    assert message.startswith(text) and " MB" not in message
    assert ("smaller image" if what == "file" else "several requests") in message


def test_read_bytes_refuses_an_oversize_file_with_the_shared_message(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\x00" * (21 * 2**20))
    with pytest.raises(ImageError) as err:
        read_bytes(big)
    assert err.value.message == size_limit_message(21 * 2**20, MAX_BYTES)
    assert err.value.message.startswith("The file is 21 MiB; at most 20 MiB are accepted per file.")


def test_text_file_named_jpg_is_unreadable(tmp_path):
    fake = tmp_path / "smear.jpg"
    fake.write_text("not an image")
    with pytest.raises(ImageError) as err:
        load_image(fake)
    assert err.value.code == "unreadable"


def test_png_named_jpg_decodes_by_content(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    path.write_bytes(encode(".png", gradient()))
    assert np.array_equal(load_image(path), gradient())


# --- pixel formats --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff"])
def test_lossless_formats_round_trip(ext):
    img = gradient()
    assert read_header(encode(ext, img)).format == {".png": "png", ".bmp": "bmp", ".tiff": "tiff"}[ext]
    out = decode_image(encode(ext, img))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out, img)


def test_jpeg_decodes_to_rgb_order():
    out = decode_image(encode(".jpg", gradient(), [cv2.IMWRITE_JPEG_QUALITY, 98]))
    assert out.shape == (60, 80, 3)
    r, g, b = out[5, 5].astype(int)
    assert r > 200 and g < 60 and b < 60  # the red corner stays red: no BGR / RGB swap


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_sixteen_bit_is_scaled_to_eight_bit(ext):
    arr = np.zeros((40, 40, 3), np.uint16)
    arr[:, :20] = 65535
    arr[:, 20:] = 32896  # 128.5 / 255 of full scale
    out = decode_image(encode(ext, arr))
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 30].tolist() == [128, 128, 128]


def test_float_tiff_is_stretched_to_eight_bit():
    arr = np.zeros((40, 40), np.float32)
    arr[:, 20:] = 3.5
    out = decode_image(encode(".tiff", arr))
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 30].tolist() == [255, 255, 255]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
def test_greyscale_becomes_three_equal_channels(ext):
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    out = decode_image(encode(ext, grey))
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])


def test_alpha_is_composited_over_white():
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[:, :20] = (0, 0, 255, 255)  # opaque red (BGRA)
    bgra[:, 20:] = (0, 0, 255, 0)  # fully transparent red
    out = decode_image(encode(".png", bgra))
    assert out.shape == (40, 40, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 30].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: a[::-1, ::-1]),
        (4, lambda a: a[::-1]),
        (5, lambda a: np.transpose(a, (1, 0, 2))),
        (6, lambda a: np.rot90(a, -1)),
        (7, lambda a: np.rot90(a[:, ::-1], 1)),
        (8, lambda a: np.rot90(a, 1)),
    ],
)
@pytest.mark.parametrize("endian", [">", "<"])
def test_exif_orientation_is_applied(orientation, expected, endian):
    img = gradient(48, 96)
    plain = decode_image(encode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    out = decode_image(jpeg_with_orientation(img, orientation, endian))
    assert out.shape == expected(plain).shape
    assert np.abs(out.astype(int) - expected(plain).astype(int)).max() <= 2


def test_bad_exif_is_ignored():
    data = encode(".jpg", gradient())
    payload = b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"  # IFD offset past the segment
    broken = data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    assert decode_image(broken).shape == (60, 80, 3)


def test_preprocess_gives_the_model_input():
    x = preprocess(gradient(300, 500))
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


# --- what several modules share: media types, capping, listing ------------------------------------------------------
@pytest.mark.parametrize(
    "ext, expected", [(".jpg", "image/jpeg"), (".png", "image/png"), (".tif", "image/tiff"), (".bmp", "image/bmp")]
)
def test_media_type_names_each_accepted_format_by_content(ext, expected):
    assert media_type(encode(ext, gradient())) == expected


@pytest.mark.parametrize("data", [b"GIF89a....", b"RIFF\0\0\0\0WEBPVP8 ", b"%PDF-1.7", b""])
def test_media_type_of_anything_else_is_octet_stream(data):
    assert media_type(data) == "application/octet-stream"


@pytest.mark.parametrize(
    "shape, max_side, expected",
    [((3000, 4000), 1024, (768, 1024)), ((4000, 3000), 1024, (1024, 768)), ((600, 800), 1024, (600, 800))],
)
def test_capping_scales_the_longest_side_down_never_up(shape, max_side, expected):
    assert capped_size(*shape, max_side) == expected
    rgb = np.zeros((*shape, 3), np.uint8)
    out = cap_longest_side(rgb, max_side)
    assert out.shape[:2] == expected
    if expected == shape:
        assert out is rgb  # a small image is not copied


def test_capping_keeps_a_one_pixel_side_of_a_very_long_image():
    assert capped_size(2, 10_000, 100) == (1, 100)


def test_image_files_at_any_depth_sorted_hidden_skipped_others_reported(tmp_path):
    for rel in ("b.png", "a.JPG", "notes.txt", "sub/c.tif", "sub/deeper/d.bmp", ".hidden/e.jpg", ".f.jpg", "z/x.pdf"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    skipped: list[str] = []
    found = list(iter_image_files(tmp_path, skipped=skipped.append))
    assert [(Path(p).relative_to(tmp_path).as_posix(), folder) for p, folder in found] == [
        ("a.JPG", "."),
        ("b.png", "."),
        ("sub/c.tif", "sub"),
        ("sub/deeper/d.bmp", "sub/deeper"),
    ]
    assert sorted(Path(p).name for p in skipped) == ["notes.txt", "x.pdf"]
