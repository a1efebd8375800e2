import numpy as np
import pytest
from PIL import Image

from detection.data.image_io import ImageDecodeError, read_image_rgb, read_image_size


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_rgb_png_behind_jpg_extension(tmp_path, rgb):
    p = tmp_path / "really_png.jpg"
    Image.fromarray(rgb).save(p, format="PNG")
    out = read_image_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)  # lossless: exactly the stored pixels
    assert read_image_size(p) == (32, 24)


def test_rgba_drops_alpha_keeps_colour(tmp_path, rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    p = tmp_path / "a.jpg"
    Image.fromarray(rgba, "RGBA").save(p, format="PNG")
    np.testing.assert_array_equal(read_image_rgb(p), rgb)


def test_palette_grey_and_la(tmp_path, rgb):
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    grey = rgb[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.bmp")
    out = read_image_rgb(tmp_path / "g.bmp")
    assert out.shape == (24, 32, 3) and (out == grey[:, :, None]).all()
    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    assert (read_image_rgb(tmp_path / "la.png") == grey[:, :, None]).all()


def test_cmyk_jpeg(tmp_path, rgb):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=98)
    out = read_image_rgb(p)
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 12  # lossy, but the right colours


def test_16bit_grey_scaled_not_clipped(tmp_path):
    g16 = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g16).save(p)
    out = read_image_rgb(p)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out[:, :, 0], g16 / 257.0, atol=1)  # full range kept, not saturated at 255
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_16bit_rgb_png(tmp_path, rgb):
    cv2 = pytest.importorskip("cv2")
    rgb16 = rgb.astype(np.uint16) * 257
    p = tmp_path / "rgb16.png"
    cv2.imwrite(str(p), rgb16[:, :, ::-1])
    np.testing.assert_array_equal(read_image_rgb(p), rgb)


def test_exif_orientation_not_applied(tmp_path, rgb):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" on display
    Image.fromarray(rgb).save(p, exif=exif, quality=95)
    assert read_image_rgb(p).shape == (24, 32, 3)  # stored grid, not the rotated view
    assert read_image_size(p) == (32, 24)


def test_truncated_empty_missing_garbage(tmp_path, rgb):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.repeat(np.repeat(rgb, 8, 0), 8, 1)).save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"trunc\.jpg: corrupt or truncated"):
        read_image_rgb(tmp_path / "trunc.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        read_image_rgb(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg: file not found"):
        read_image_rgb(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image at all")
    with pytest.raises(ImageDecodeError, match=r"text\.jpg: not an image"):
        read_image_size(tmp_path / "text.jpg")


def test_real_fruit_png_and_rgba_files(shared_data):
    """The fruit set has PNG (RGBA, palette) files named .jpg: all decode to RGB uint8 of the header's size."""
    odd = []
    for p in sorted((shared_data / "fruit").glob("*.jpg")):
        with Image.open(p) as im:
            if im.format != "JPEG" or im.mode != "RGB":
                odd.append((p, im.mode))
    assert len(odd) >= 22
    modes = {m for _, m in odd}
    assert {"RGBA", "P"} <= modes
    for p, _ in odd:
        arr = read_image_rgb(p)
        w, h = read_image_size(p)
        assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
