"""Image / video loading (DALI vs the PIL / PyAV reference) and I2V reference-image encoding.

Tolerances, in 1/255 levels: both backends decode JPEG with libjpeg-style fancy
upsampling and VP9 to the same YUV, convert it with BT.601 (our PyAV path mirrors
DALI's conversion) and resize in float with a bilinear, antialiased filter over the
same fractional box. Measured (DALI 2.4 CPU vs PIL / PyAV): images mean 0.005/255,
interior max 0.0002/255, outermost row / column up to 2.9/255 when shrinking (DALI's
filter clamps at the crop box, PIL reads the pixels beyond it); video mean 0.007/255,
max 1/255 (YUV->RGB rounding). Asserted with a few-fold margin.
"""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dancegrpo_hpc.data.dali_loading import load_images, load_videos
from dancegrpo_hpc.data.reference_images import (encode_reference_images, load_video_vae,
                                                 reference_latents)

PIL = pytest.importorskip("PIL.Image", reason="Pillow is not installed (it is in the dev extra)")
av = pytest.importorskip("av", reason="PyAV is not installed (it is in the dev extra)")
try:
    import nvidia.dali  # noqa: F401

    DALI = None
except ImportError as e:  # nvidia-dali-cuda120 has wheels for Linux x86_64 / aarch64 only
    DALI = f"NVIDIA DALI unavailable on this platform ({e}); pip install nvidia-dali-cuda120"
needs_dali = pytest.mark.skipif(DALI is not None, reason=DALI or "")

LEVEL = 1 / 255
H, W = 32, 48


def _write_image(path, h, w, mode="RGB", **save):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / (w - 1), y * 255 / (h - 1),
                    (np.sin(x / 3.0) * np.cos(y / 4.0) * 0.5 + 0.5) * 255], -1).astype(np.uint8)
    PIL.fromarray(img).convert(mode).save(path, **save)
    return str(path)


def _frame(i, h, w):
    """Frame i: red channel 20 + 25 i everywhere (the frame index), gradients in G / B."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.full((h, w), 20 + 25 * i), x * 255 // (w - 1), y * 255 // (h - 1)], -1).astype(np.uint8)


def _write_vp9(path, frames, h, w):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"lossless": "1"}  # keeps the test about decoding, not about the codec's loss
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame(i, h, w), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    bad = d / "bad.png"
    bad.write_bytes(b"this is not an image")
    return SimpleNamespace(
        images=[_write_image(d / "wide.png", 40, 56),          # shrink, crop rows
                _write_image(d / "tall.jpg", 56, 40, quality=95),  # crop rows heavily, JPEG
                _write_image(d / "small.png", 20, 30),         # enlarge
                _write_image(d / "big.jpg", 100, 120, quality=90),  # shrink 2x, crop columns
                _write_image(d / "gray.png", 40, 56, mode="L")],
        videos=[_write_vp9(d / "a.webm", 9, 48, 64), _write_vp9(d / "b.webm", 9, 40, 48)],
        bad=str(bad), dir=d,
    )


def _diffs(a, b):
    d = (a - b).abs()
    return d.mean().item() / LEVEL, d[..., 1:-1, 1:-1].max().item() / LEVEL, d.max().item() / LEVEL


# ---- images --------------------------------------------------------------------------------------
@needs_dali
def test_images_dali_cpu_matches_pil(media):
    ref = load_images(media.images, H, W, backend="pil")
    out = load_images(media.images, H, W, backend="dali", device="cpu")
    assert out.shape == ref.shape == (len(media.images), 3, H, W) and out.dtype == torch.float32
    assert out.device.type == "cpu" and 0 <= out.min() and out.max() <= 1
    mean, interior, worst = _diffs(out, ref)
    assert mean < 0.05 and interior < 0.01 and worst < 6, (mean, interior, worst)
    # a second call reuses the built pipeline and gives the same tensor; batches split cleanly
    assert torch.equal(load_images(media.images, H, W, batch_size=2), out)


@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=needs_dali)])
def test_crop_geometry_is_exact(media, backend):
    """A 40x56 image to 40x28: the centre 28 columns (14..41), copied pixel for pixel, and
    the grayscale image replicated to three channels."""
    src = np.asarray(PIL.open(media.images[0]).convert("RGB"), dtype=np.float32) / 255
    out = load_images(media.images[:1] + media.images[-1:], 40, 28, backend=backend)
    want = torch.from_numpy(src[:, 14:42]).permute(2, 0, 1)
    assert (out[0] - want).abs().max() < 1e-4
    gray = out[1]
    assert (gray - gray[0:1]).abs().max() < 1e-6
    assert (gray[0] - torch.from_numpy(np.asarray(PIL.open(media.images[-1]), dtype=np.float32)[:, 14:42] / 255)
            ).abs().max() < 1e-4


def test_pil_shrink_is_box_average():
    """Independent check of the reference filter: halving a 2x2-periodic image averages it."""
    from dancegrpo_hpc.data.media_reference import crop_resize

    img = np.zeros((8, 8, 3), np.uint8)
    img[::2, ::2] = 200  # one pixel in four
    out = crop_resize(img, 4, 4)
    assert np.allclose(out[:, 1:-1, 1:-1], 50 / 255, atol=1e-5)


# ---- videos --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=needs_dali)])
def test_video_frames_in_order(media, backend):
    out = load_videos(media.videos, 4, H, W, stride=2, backend=backend)
    assert out.shape == (2, 4, 3, H, W) and out.dtype == torch.float32
    red = out[:, :, 0, 2:-2, 2:-2].mean(dim=(-1, -2))  # frame t is source frame 2t: red = 20 + 50 t
    want = torch.tensor([20 + 50 * t for t in range(4)], dtype=torch.float32) / 255
    assert (red - want).abs().max() < 2 * LEVEL, red * 255


@needs_dali
def test_video_dali_cpu_matches_av(media):
    ref = load_videos(media.videos, 5, H, W, stride=2, backend="av")
    out = load_videos(media.videos, 5, H, W, stride=2, backend="dali", device="cpu")
    mean, interior, worst = _diffs(out, ref)
    assert mean < 0.1 and interior < 1.01 and worst < 4, (mean, interior, worst)


@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=needs_dali)])
def test_short_video_is_an_error(media, backend):
    with pytest.raises(ValueError, match=r"a\.webm is too short: frames=6 at stride=2 needs 11 frames") as e:
        load_videos(media.videos[:1], 6, H, W, stride=2, backend=backend)
    assert "\n" not in str(e.value)


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["pil", pytest.param("dali", marks=needs_dali)])
def test_loader_errors_are_one_line(media, backend):
    cases = [
        (FileNotFoundError, "no such file: .*missing.png", lambda: load_images([media.dir / "missing.png"], H, W,
                                                                              backend=backend)),
        (ValueError, "cannot decode .*bad.png", lambda: load_images(media.images[:2] + [media.bad], H, W,
                                                                    backend=backend)),
        (ValueError, "cannot decode .*bad.png", lambda: load_videos([media.bad], 2, H, W, backend=backend)),
        (ValueError, "height must be a positive integer", lambda: load_images(media.images, 0, W, backend=backend)),
        (ValueError, "backend must be one of", lambda: load_images(media.images, H, W, backend="opencv")),
        (ValueError, "device must be", lambda: load_images(media.images, H, W, backend=backend, device="tpu")),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)
    if backend == "dali":  # the pipeline that failed was replaced: loading works again
        assert load_images(media.images[:2], H, W).shape == (2, 3, H, W)


def test_missing_dali_names_the_fix(media, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    monkeypatch.setattr("dancegrpo_hpc.data.dali_loading._PIPES", {})
    with pytest.raises(ImportError, match=r"backend='dali' needs NVIDIA DALI.*pip install nvidia-dali-cuda120.*"
                                          r"backend='pil'") as e:
        load_images(media.images, H, W, backend="dali")
    assert "\n" not in str(e.value)


@pytest.mark.gpu
@needs_dali
def test_mixed_device_matches_cpu(media):
    img_cpu = load_images(media.images, H, W, device="cpu")
    img_gpu = load_images(media.images, H, W, device="mixed")
    assert img_gpu.device.type == "cuda"
    mean, interior, worst = _diffs(img_gpu.cpu(), img_cpu)
    assert mean < 0.5 and interior < 3 and worst < 8, (mean, interior, worst)  # nvJPEG's IDCT differs slightly
    vid_cpu = load_videos(media.videos, 4, H, W, stride=2, device="cpu")
    vid_gpu = load_videos(media.videos, 4, H, W, stride=2, device="mixed")
    mean, interior, worst = _diffs(vid_gpu.cpu(), vid_cpu)
    assert mean < 0.5 and interior < 2.01 and worst < 8, (mean, interior, worst)


# ---- reference images through the VAE ---------------------------------------------------------------
# Latent tolerance: encoding images in different micro-batches changes float32 summation
# order (measured <= 2e-6 on latents of magnitude ~0.5); atol 1e-5 covers that, nothing more.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny VAE's convolutions are too small to split over threads; on a busy 2-core
    machine two threads made the tiled encode 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from dancegrpo_hpc.testing.tiny_real import write_tiny_vae

    return write_tiny_vae(tmp_path_factory.mktemp("vae"), scaling_factor=0.7, mid_block_add_attention=False)


def _diffusers_i2v_latents(vae, images):
    """diffusers' own HunyuanVideoImageToVideoPipeline.prepare_latents on our [0, 1] images
    (the pipeline's preprocess gives [-1, 1]); token_replace returns frame 0's latents."""
    from diffusers import HunyuanVideoImageToVideoPipeline

    pipe = SimpleNamespace(vae=vae, vae_scale_factor_temporal=4, vae_scale_factor_spatial=8,
                           vae_scaling_factor=vae.config.scaling_factor)
    n, _, h, w = images.shape
    _, image_latents = HunyuanVideoImageToVideoPipeline.prepare_latents(
        pipe, images * 2 - 1, n, vae.config.latent_channels, h, w, 1, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(0), image_condition_type="token_replace")
    return image_latents


def test_encode_matches_diffusers_i2v_pipeline(media, vae_dir):
    vae = load_video_vae(vae_dir, "cpu", torch.float32, tiling=False)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    images = load_images(media.images[:3], H, W, backend="pil")
    latents = encode_reference_images(vae, images, micro_batch=2)
    assert latents.shape == (3, 4, 1, H // 8, W // 8) and latents.dtype == torch.float32
    with torch.no_grad():
        want = _diffusers_i2v_latents(vae, images)
    assert torch.allclose(latents, want, **TOL), (latents - want).abs().max()
    # the scaling factor comes from the VAE's config (0.7 here, not HunyuanVideo's 0.476986)
    with torch.no_grad():
        mode = vae.encode(images[:1].unsqueeze(2) * 2 - 1).latent_dist.mode()
    assert torch.allclose(latents[:1], 0.7 * mode, **TOL)
    # paths -> latents in one call
    got = reference_latents(vae, media.images[:3], H, W, backend="pil")
    assert torch.allclose(got, latents, **TOL), (got - latents).abs().max()


def test_tiled_encode(media, vae_dir):
    """Tiling engaged with 32-pixel tiles (stride 24) gives diffusers' tiled_encode exactly.
    It is not compared with the untiled encode: with random weights the two differ by
    O(1) (relative 0.4-1.4 measured: per-tile GroupNorm statistics, receptive field wider
    than a tile); that approximation is only good for a trained VAE. Tiles as large as
    the image reproduce the untiled encode exactly."""
    images = load_images(media.images[:2], 48, 64, backend="pil")
    untiled = encode_reference_images(load_video_vae(vae_dir, tiling=False), images)
    vae = load_video_vae(vae_dir, tiling=True, tile_size=32, tile_stride=24)
    assert vae.use_tiling and (vae.tile_sample_min_height, vae.tile_sample_stride_width) == (32, 24)
    tiled = encode_reference_images(vae, images)
    with torch.no_grad():
        enc = vae.tiled_encode(images.unsqueeze(2) * 2 - 1)
    want = enc[:, : enc.shape[1] // 2] * vae.config.scaling_factor  # the posterior's mode = its mean
    assert tiled.shape == untiled.shape and torch.allclose(tiled, want, **TOL)
    assert (tiled - untiled).norm() > 0.05 * untiled.norm()  # the tiled path really ran
    whole = encode_reference_images(load_video_vae(vae_dir, tiling=True, tile_size=64), images)
    assert torch.allclose(whole, untiled, **TOL)


def test_vae_errors_are_one_line(media, vae_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"_class_name": "AutoencoderKLHunyuanVideo"}')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    cases = [
        (FileNotFoundError, "no diffusers VAE at .*set data.vae", lambda: load_video_vae(tmp_path / "nope")),
        (FileNotFoundError, "cannot load the VAE in .*empty: .*set data.vae",
         lambda: load_video_vae(tmp_path / "empty")),
        (ValueError, "holds AutoencoderKL, not AutoencoderKLHunyuanVideo", lambda: load_video_vae(tmp_path / "other")),
        (ValueError, "tile_size must be a positive multiple of the VAE's compression 8",
         lambda: load_video_vae(vae_dir, tile_size=30)),
        (ValueError, "tile_frames must be a positive multiple of the VAE's compression 4",
         lambda: load_video_vae(vae_dir, tile_frames=6)),
        (ValueError, "tile_stride=48 must not exceed tile_size=32",
         lambda: load_video_vae(vae_dir, tile_size=32, tile_stride=48)),
    ]
    vae = load_video_vae(vae_dir, tiling=False)
    cases += [
        (ValueError, r"multiples of the VAE's 8x", lambda: encode_reference_images(vae, torch.rand(1, 3, 20, 24))),
        (ValueError, r"must be in \[0, 1\]", lambda: encode_reference_images(vae, torch.rand(1, 3, 16, 16) * 2 - 1)),
        (ValueError, r"must be \[N, 3, H, W\]", lambda: encode_reference_images(vae, torch.rand(3, 16, 16))),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)
