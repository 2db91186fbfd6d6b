"""Rendering: windowing on synthetic images with known values, MONOCHROME1, colour, frames, sizes,
and the compressed transfer syntaxes of pydicom's bundled test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from fhirimg.errors import RenderError
from fhirimg.images.render import per_stored_value, render_file, window


def test_window_linear_formula() -> None:
    # PS3.3 C.11.2.1.2.1 with c=40, w=400: x <= c-0.5-(w-1)/2 = -160 -> 0; x > 239 -> 255
    out = window(np.array([-1000, -160, 40, 239, 240, 3000]), 40, 400)
    assert out.tolist() == [0, 0, 128, 255, 255, 255]


def test_window_linear_exact_and_sigmoid() -> None:
    assert window(np.array([-160, 40, 240]), 40, 400, "LINEAR_EXACT").tolist() == [0, 128, 255]
    sig = window(np.array([-1000, 40, 1000]), 40, 400, "SIGMOID").tolist()
    assert sig[0] == 0
    assert sig[1] == 128
    assert sig[2] == 255


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["int16", "uint16", "int8", "uint8", ">i2", ">u2"]),
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(512, 300), (64, 64), (16, 16)]),
    slope=st.sampled_from([None, 1.0, 0.5, 2.0, -1.0, 1e-3]),
    intercept=st.sampled_from([0.0, -1024.0, 7.25]),
    center=st.floats(-3000, 3000),
    width=st.floats(0.5, 5000),
    function=st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"]),
)
def test_the_stored_value_table_gives_the_direct_bytes(
    dtype: str,
    seed: int,
    shape: tuple[int, int],
    slope: float | None,
    intercept: float,
    center: float,
    width: float,
    function: str,
) -> None:
    """Rescale + window through a table of every stored value is the direct computation, value
    for value, whatever the type, parameters, function (and its refusals of a width)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    lo = int(rng.integers(info.min, info.max))
    hi = int(rng.integers(lo, info.max))  # a frame's range: narrow (a table) or wide (direct)
    native = np.dtype(dtype).newbyteorder("=")  # big-endian frames: values drawn natively
    frame = rng.integers(lo, hi, shape, dtype=native, endpoint=True).astype(dtype)

    def transform(x: np.ndarray) -> np.ndarray:
        values = x if slope is None else x.astype(np.float64) * slope + intercept
        return window(values, center, width, function)

    try:
        with np.errstate(all="ignore"):  # a SIGMOID overflows to 0 or 255
            direct = transform(frame)
    except ValueError:
        with pytest.raises(ValueError, match="window width"):
            per_stored_value(frame, transform)
        return
    with np.errstate(all="ignore"):
        looked_up = per_stored_value(frame, transform)
    assert looked_up.dtype == np.uint8
    assert np.array_equal(looked_up, direct)


def test_window_width_one_is_a_threshold() -> None:
    assert window(np.array([0, 10, 11]), 10.5, 1).tolist() == [0, 0, 255]
    with pytest.raises(ValueError, match="width"):
        window(np.array([0]), 0, 0.5)


def _image(
    tmp: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    **attrs: object,
) -> Path:
    """A minimal Secondary Capture file with the given pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PhotometricInterpretation = photometric
    frames = pixels.shape[0] if attrs.pop("multiframe", False) else 1
    shape = pixels.shape[1:] if frames > 1 else pixels.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if pixels.ndim == (4 if frames > 1 else 3) else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = attrs.pop("PlanarConfiguration", 0)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    raw = pixels
    if ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 1:
        raw = np.moveaxis(pixels, -1, -3)  # RRR..GGG..BBB.. per frame
    ds.PixelData = np.ascontiguousarray(raw).tobytes()
    path = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def flat(image: Image.Image) -> list[int]:
    return [int(v) for v in np.asarray(image).ravel()]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_ct_rescale_and_window(tmp_path: Path) -> None:
    """Stored 0, 1064, 3000 with intercept -1024 are HU -1024, 40, 1976; window 40/400 gives
    0, 128, 255. A second window value is ignored (first value when several)."""
    stored = np.array([[0, 1064, 3000, 864]], dtype=np.int16)
    path = _image(
        tmp_path,
        stored,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=[40, -600],
        WindowWidth=[400, 1500],
    )
    r = render_file(str(path))
    assert r is not None
    image = _open(r.data)
    assert image.mode == "L"
    assert image.size == (4, 1)
    # HU -160 is at c - 0.5 - (w-1)/2 = -160: the bottom of the window
    assert flat(image) == [0, 128, 255, 0]


def test_slope_applies_before_window(tmp_path: Path) -> None:
    stored = np.array([[10, 20, 30]], dtype=np.uint16)
    r = render_file(
        str(
            _image(
                tmp_path,
                stored,
                RescaleSlope=2,
                RescaleIntercept=0,
                WindowCenter=40,
                WindowWidth=40,
            )
        )
    )
    assert r is not None
    # values 20, 40, 60: ((x - 39.5) / 39 + 0.5) * 255 -> 0, 130.8, 261 (clipped)
    assert flat(_open(r.data)) == [0, 131, 255]


def test_no_window_uses_the_frame_range(tmp_path: Path) -> None:
    r = render_file(str(_image(tmp_path, np.array([[100, 150, 200]], dtype=np.uint16))))
    assert r is not None
    assert flat(_open(r.data)) == [0, 128, 255]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[0, 1064, 3000]], dtype=np.int16)
    common = {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": 40, "WindowWidth": 400}
    m1 = render_file(str(_image(tmp_path, pixels, "MONOCHROME1", **common)))
    assert m1 is not None
    assert flat(_open(m1.data)) == [255, 127, 0]


def test_rgb_planar_configuration(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 2] = (0, 0, 255)
    for planar in (0, 1):
        r = render_file(str(_image(tmp_path, rgb, "RGB", PlanarConfiguration=planar)))
        assert r is not None
        image = _open(r.data)
        assert image.mode == "RGB"
        assert image.size == (3, 2)
        assert image.getpixel((0, 0)) == (255, 0, 0)
        assert image.getpixel((2, 1)) == (0, 0, 255)


def test_multiframe_middle_and_chosen_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (10, 20, 30, 40)])
    frames[:, 0, 0] = 0
    # window 128/256 maps x to ((x - 127.5) / 255 + 0.5) * 255 = x: each frame shows its value
    path = _image(tmp_path, frames, multiframe=True, WindowCenter=128, WindowWidth=256)
    middle = render_file(str(path))
    assert middle is not None
    assert (middle.frame, middle.frames) == (2, 4)
    assert _open(middle.data).getpixel((1, 1)) == 20
    third = render_file(str(path), frame=3)
    assert third is not None
    assert _open(third.data).getpixel((1, 1)) == 30
    past = render_file(str(path), frame=9)
    assert past is not None
    assert past.frame == 4
    assert past.notes


def test_thumbnail_and_jpeg(tmp_path: Path) -> None:
    pixels = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64)
    r = render_file(str(_image(tmp_path, pixels)), size=16, fmt="jpeg")
    assert r is not None
    assert r.content_type == "image/jpeg"
    image = _open(r.data)
    assert image.format == "JPEG"
    assert image.size == (16, 8) == (r.width, r.height)


def test_non_image_objects_give_none() -> None:
    assert render_file(get_testdata_file("rtplan.dcm", download=False)) is None  # type: ignore[arg-type]


def test_undecodable_image_raises_render_error(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4), dtype=np.uint16)
    path = _image(tmp_path, pixels)
    ds = pydicom.dcmread(path)
    ds.PixelData = b"\0" * 6  # too short for 4 x 4 x 2 bytes
    ds.save_as(path)
    with pytest.raises(RenderError, match="cannot decode"):
        render_file(str(path))


COMPRESSED = [
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
    "JPGExtended.dcm",  # JPEG extended (process 2 and 4), 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless process 14 SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "MR_small_RLE.dcm",  # RLE
    "SC_rgb_rle_16bit_2frame.dcm",  # RLE, RGB 16-bit, 2 frames
    "image_dfl.dcm",  # deflated explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "SC_rgb_small_odd_big_endian.dcm",  # big endian RGB
    "SC_ybr_full_422_uncompressed.dcm",  # YBR_FULL_422 native
    "rtdose_rle.dcm",  # RLE, 15 frames, 32-bit
]


@pytest.mark.parametrize("name", COMPRESSED)
def test_pydicom_compressed_samples_decode(name: str) -> None:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    r = render_file(str(path))
    assert r is not None
    image = _open(r.data)
    assert image.size == (ds.Columns, ds.Rows)
    assert image.mode == ("RGB" if ds.SamplesPerPixel == 3 else "L")
    # not a blank picture
    assert len(np.unique(np.asarray(image).reshape(-1, len(image.getbands())), axis=0)) > 1


def test_known_undecodable_sample_is_reported() -> None:
    """JPEG-lossy.dcm has a misplaced marker segment neither pylibjpeg nor Pillow accept: it is
    a RenderError with the reason, not a crash."""
    path = get_testdata_file("JPEG-lossy.dcm", download=False)
    assert path is not None
    with pytest.raises(RenderError, match="JPEG Extended"):
        render_file(str(path))
