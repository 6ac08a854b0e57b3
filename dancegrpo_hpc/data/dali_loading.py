"""Image and video loading with NVIDIA DALI, and the backend switch.

  load_images(paths, height, width, backend, device) -> [N, 3, H, W] float32 in [0, 1]
  load_videos(paths, frames, height, width, stride, backend, device) -> [N, T, 3, H, W]

Every image / frame is decoded to RGB, the centred region of aspect ratio W/H is
cut out and resized to exactly H x W (bilinear, antialiased when shrinking): the
same as "resize the shorter side, centre-crop", without rounding the intermediate
size. Videos give frames 0, stride, ..., (T-1)*stride.

backend: "dali" (default) or "pil" (PIL for images, PyAV for videos; "av" is an
alias), the reference implementation in media_reference.py.
device: where decoding runs and where the result lives. "cpu": CPU decoders.
"mixed" (or "cuda", "cuda:k", a torch.device): DALI decodes on the GPU (nvJPEG,
NVDEC) and returns a CUDA tensor; the "pil" backend decodes on the CPU and copies.

DALI 2.4 on CPU decodes JPEG / PNG / ... images and VP8 / VP9 / MJPEG video (any
container FFmpeg parses; tested: webm); H.264, HEVC, AV1 and MPEG-4 need "mixed"
(NVDEC). We feed file bytes through external_source to fn.decoders.video rather
than use readers.video, which cuts every file into many fixed-length sequences and
iterates a dataset by epochs: here each path gives one clip, in the caller's order.
Pipelines are cached per shape and are not thread-safe, hence one lock.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import media_reference as ref

Device = Union[str, torch.device]
_PIPES: Dict[tuple, object] = {}  # built pipelines, reused across calls (building one costs ~10 ms)
_LOCK = threading.Lock()
BACKENDS = ("dali", "pil", "av")


def _dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise ImportError("backend='dali' needs NVIDIA DALI, which is not installed: pip install nvidia-dali-cuda120 "
                          "(or load with backend='pil')") from None
    return nvidia.dali


def _device(device: Device, backend: str, what: str) -> Tuple[Optional[int], torch.device]:
    """-> (DALI device_id or None for CPU decoding, torch device of the result)."""
    if backend not in BACKENDS:
        raise ValueError(f"{what}: backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    try:
        dev = torch.device("cuda" if str(device) == "mixed" else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: device must be 'cpu', 'mixed' or a CUDA device; got {device!r}") from None
    if dev.type == "cpu":
        return None, dev
    if dev.type != "cuda":
        raise ValueError(f"{what}: device must be 'cpu', 'mixed' or a CUDA device; got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what}: device={str(device)!r} needs a CUDA GPU and a CUDA build of torch; "
                           "use device='cpu'")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    return index, torch.device("cuda", index)


def _crop_resize(frames, height: int, width: int, layout: str):
    """DALI graph: centre region of aspect width/height -> float [.., 3, height, width] / 255.
    The crop is media_reference.crop_fraction written with DALI's math; as a relative
    resize ROI it is the same box PIL's resize(box=...) uses."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    shape = frames.shape(dtype=types.FLOAT)
    h, w = shape[layout.index("H")], shape[layout.index("W")]
    fy = dmath.min(1.0, (height / width) * w / h)
    fx = dmath.min(1.0, (width / height) * h / w)
    out = fn.resize(frames, size=[height, width], roi_start=fn.stack(0.5 - fy / 2, 0.5 - fx / 2),
                    roi_end=fn.stack(0.5 + fy / 2, 0.5 + fx / 2), roi_relative=True,
                    interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)
    # Note: at the ROI's edge DALI's antialiasing filter clamps to the ROI, where PIL's
    # reads the pixels just outside the box: the outermost row / column may differ by a
    # few levels when shrinking (measured < 5/255); interior pixels agree to ~1e-4/255.
    return fn.crop_mirror_normalize(out, mean=0.0, std=255.0, dtype=types.FLOAT,
                                    output_layout="CHW" if layout == "HWC" else "FCHW")


def _pipeline(kind: str, device_id: Optional[int], batch: int, threads: int, height: int, width: int,
              frames: int = 0, stride: int = 1):
    key = _key(kind, device_id, batch, threads, height, width, frames, stride)
    if key in _PIPES:
        return _PIPES[key]
    dali = _dali()
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    dec = "cpu" if device_id is None else "mixed"

    # Synchronous, no prefetch: each run() decodes exactly the batch just fed.
    @dali.pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id, exec_async=False,
                       exec_pipelined=False, prefetch_queue_depth=1)
    def build():
        data = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
        if kind == "image":
            # jpeg_fancy_upsampling: nvJPEG ("mixed") upsamples chroma like libjpeg (cpu, PIL)
            img = fn.decoders.image(data, device=dec, output_type=types.RGB, jpeg_fancy_upsampling=True)
            return _crop_resize(img, height, width, "HWC")
        # pad_mode="none": a short clip gives fewer frames (checked after the run), never padding
        video = fn.decoders.video(data, device=dec, start_frame=0, sequence_length=frames, stride=stride,
                                  pad_mode="none")
        return _crop_resize(video, height, width, "FHWC")

    pipe = build()
    pipe.build()
    _PIPES[key] = pipe
    return pipe


def _reason(err: Exception) -> str:
    """The line of DALI's multi-line error that says what went wrong."""
    text = str(err)
    m = re.search(r"encountered:\s*\n\s*(.+)", text)
    line = (m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(err).__name__).strip()
    line = re.sub(r'^Assert on ".*?" failed:\s*', "", line)
    return re.sub(r"\s*C\+\+ context:.*", "", line)


def _run_dali(kind: str, paths: List[str], device_id: Optional[int], out_device: torch.device, what: str,
              batch: int, threads: int, **shape) -> torch.Tensor:
    _dali()  # the one-line error when DALI is missing
    from nvidia.dali.plugin.pytorch import feed_ndarray

    args = (kind, device_id, batch, threads)
    outs = []
    with _LOCK:
        for i in range(0, len(paths), batch):
            outs.append(_run_chunk(paths[i:i + batch], args, out_device, what, shape, feed_ndarray))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _run_chunk(chunk: List[str], args: tuple, out_device: torch.device, what: str, shape: dict,
               feed_ndarray) -> torch.Tensor:
    kind = args[0]
    data = [np.fromfile(p, dtype=np.uint8) for p in chunk]
    for p, d in zip(chunk, data):
        if d.size == 0:
            raise ValueError(f"{what}: empty file: {p}")
    pipe = _pipeline(*args, **shape)
    try:
        pipe.feed_input("encoded", data)
        (tl,) = pipe.run()
    except RuntimeError as e:
        _PIPES.pop(_key(*args, **shape), None)  # a failed DALI pipeline is no longer usable
        _raise_bad_file(kind, chunk, data, args, shape, what, e)
    shapes = [tuple(s) for s in tl.shape()]
    if kind == "video":
        f, st = shape["frames"], shape["stride"]
        for p, s in zip(chunk, shapes):
            if s[0] < f:
                raise ValueError(f"{what}: {p} is too short: frames={f} at stride={st} needs "
                                 f"{(f - 1) * st + 1} frames, it has fewer")
    out = torch.empty((len(chunk), *shapes[0]), dtype=torch.float32, device=out_device)
    stream = torch.cuda.current_stream(out_device) if out_device.type == "cuda" else None
    feed_ndarray(tl.as_tensor(), out, cuda_stream=stream)  # copy: DALI reuses its buffers next run
    return out


def _key(kind, device_id, batch, threads, height, width, frames=0, stride=1) -> tuple:
    return (kind, device_id, batch, threads, height, width, frames, stride)


def _raise_bad_file(kind, chunk, data, args, shape, what, err):
    """DALI reports a failed batch, not which file failed: decode them one at a time."""
    for p, d in zip(chunk, data):
        pipe = _pipeline(*args, **shape)
        try:
            pipe.feed_input("encoded", [d])
            pipe.run()
        except RuntimeError as e:
            _PIPES.pop(_key(*args, **shape), None)
            raise ValueError(f"{what}: DALI cannot decode {kind} {p}: {_reason(e)}") from None
    raise RuntimeError(f"{what}: DALI failed on {len(chunk)} {kind}s: {_reason(err)}") from None


def _threads(num_threads: Optional[int]) -> int:
    return num_threads or max(1, min(4, os.cpu_count() or 1))


def _check_size(what: str, height: int, width: int, frames: int = 1, stride: int = 1):
    for name, v in (("height", height), ("width", width), ("frames", frames), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what}: {name} must be a positive integer; got {v!r}")


def load_images(paths: Sequence[str], height: int, width: int, backend: str = "dali", device: Device = "cpu", *,
                batch_size: int = 16, num_threads: Optional[int] = None) -> torch.Tensor:
    """Image files (JPEG, PNG, ...) -> [N, 3, height, width] float32 in [0, 1], in path order."""
    what = "load_images"
    _check_size(what, height, width)
    device_id, out_device = _device(device, backend, what)
    paths = ref.check_files(paths, what)
    if backend != "dali":
        return ref.load_images_pil(paths, height, width).to(out_device)
    return _run_dali("image", paths, device_id, out_device, what, batch_size, _threads(num_threads),
                     height=height, width=width)


def load_videos(paths: Sequence[str], frames: int, height: int, width: int, stride: int = 1, backend: str = "dali",
                device: Device = "cpu", *, batch_size: int = 4, num_threads: Optional[int] = None) -> torch.Tensor:
    """Video files -> [N, frames, 3, height, width] float32 in [0, 1]: frames 0, stride, ..., of each clip.
    A clip shorter than (frames-1)*stride+1 frames is an error (never padded)."""
    what = "load_videos"
    _check_size(what, height, width, frames, stride)
    device_id, out_device = _device(device, backend, what)
    paths = ref.check_files(paths, what)
    if backend != "dali":
        return ref.load_videos_av(paths, frames, height, width, stride).to(out_device)
    return _run_dali("video", paths, device_id, out_device, what, batch_size, _threads(num_threads),
                     height=height, width=width, frames=frames, stride=stride)


__all__ = ["BACKENDS", "load_images", "load_videos"]
