"""Run outputs: metrics.jsonl (append, resume truncation), TensorBoard scalars,
reward-curve PNG, video-grid GIF (with prompt labels), summary.json and console progress."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.outputs import (
    MetricsLog, TrainingProgress, format_metrics_line, format_summary_line, plot_reward_curve, read_metrics,
    read_summary, render_video_grid, reward_curve_keys, write_summary, write_video_grid,
)
from dancegrpo_hpc.outputs.video_grid import BACKGROUND, wrap_label


def _scalar_events(output_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(output_dir / "tensorboard"))
    accumulator.Reload()
    events = accumulator.Scalars(tag)
    return [event.step for event in events], [event.value for event in events]


def test_metrics_are_appended_one_line_per_iteration(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(1, {"reward_mean": 0.25, "loss": torch.tensor(-0.5), "rewards": {"hps": 0.125}})
        log.log(2, {"reward_mean": 0.5, "loss": -0.25, "rewards": {"hps": 0.25}})
        with pytest.raises(InputError, match="above the last logged one"):
            log.log(2, {"reward_mean": 0.0})
        # readable while the run is still writing
        assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    records = read_metrics(tmp_path)
    assert records == [{"iteration": 1, "reward_mean": 0.25, "loss": -0.5, "rewards": {"hps": 0.125}},
                       {"iteration": 2, "reward_mean": 0.5, "loss": -0.25, "rewards": {"hps": 0.25}}]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_keeps_records_up_to_the_checkpoint_and_drops_a_partial_line(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for iteration in range(1, 6):
            log.log(iteration, {"reward_mean": float(iteration)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 6, "reward_me')  # a write cut short by a kill
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]

    with MetricsLog(tmp_path, tensorboard=False, resume_iteration=3) as log:
        assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2, 3]
        log.log(4, {"reward_mean": 40.0})
    records = read_metrics(tmp_path)
    assert [(r["iteration"], r["reward_mean"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")

    MetricsLog(tmp_path, tensorboard=False).close()  # a fresh run starts an empty log
    assert read_metrics(tmp_path) == []


def test_a_corrupt_line_before_the_last_is_reported(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_tensorboard_holds_the_scalars_and_a_resume_replaces_later_steps(tmp_path):
    with MetricsLog(tmp_path) as log:
        for iteration in (1, 2, 3):
            log.log(iteration, {"reward_mean": 0.1 * iteration, "rewards": {"hps_mean": 1.0 + iteration}, "note": "x"})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    steps, values = _scalar_events(tmp_path, "reward_mean")
    assert steps == [1, 2, 3] and values == pytest.approx([0.1, 0.2, 0.3])
    assert _scalar_events(tmp_path, "rewards/hps_mean") == ([1, 2, 3], [2.0, 3.0, 4.0])

    with MetricsLog(tmp_path, resume_iteration=2) as log:
        log.log(3, {"reward_mean": 0.9})
    steps, values = _scalar_events(tmp_path, "reward_mean")
    assert steps == [1, 2, 3] and values == pytest.approx([0.1, 0.2, 0.9])


def test_missing_tensorboard_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(InputError, match="pip install tensorboard.*logging.tensorboard=false"):
        MetricsLog(tmp_path)


def test_reward_curve_png(tmp_path):
    metrics = [{"iteration": i, "reward_mean": 0.1 * i, "rewards/hps_mean": 0.2 * i, "loss": -i} for i in range(1, 9)]
    keys = reward_curve_keys(metrics)
    assert keys == ["reward_mean", "rewards/hps_mean"]
    path = plot_reward_curve(metrics, tmp_path / "plots" / "reward.png", keys=keys)
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 300 and height > 300  # two stacked panels
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16)) > 2  # something was drawn
    with pytest.raises(InputError, match="no record has kl_mean; available keys: iteration, loss"):
        plot_reward_curve(metrics, tmp_path / "x.png", keys=("kl_mean",))


def test_video_grid_gif_has_every_frame_and_each_clip_where_the_layout_says(tmp_path):
    frames, height, width, scale = 4, 8, 6, 4
    before = torch.zeros(2, frames, 3, height, width)
    after = torch.zeros(2, frames, 3, height, width)
    for f in range(frames):
        before[0, f, 0] = 1.0  # red clip
        before[1, f, 1] = 1.0  # green clip
        after[1, f, 2] = 1.0  # blue clip
        after[0, f, :, f, 0] = 1.0  # a white pixel moving down the first column, one row per frame
    layout = write_video_grid({"before": before, "after": after}, tmp_path / "grid.gif", scale=scale)
    assert (layout.tile_width, layout.tile_height) == (width * scale, height * scale)

    with Image.open(tmp_path / "grid.gif") as gif:
        assert gif.n_frames == frames
        assert gif.size == layout.size
        for f in range(frames):
            gif.seek(f)
            rgb = gif.convert("RGB")

            def at(row, column, y=0, x=0):
                x0, y0 = layout.tile_origin(row, column)
                return rgb.getpixel((x0 + x, y0 + y))

            assert at(0, 0, 5, 5) == (255, 0, 0) and at(0, 1, 5, 5) == (0, 255, 0) and at(1, 1, 5, 5) == (0, 0, 255)
            # nearest-neighbour upscale: source pixel (f, 0) covers a scale x scale block
            for y in range(height * scale):
                assert at(1, 0, y, scale - 1) == ((255, 255, 255) if y // scale == f else (0, 0, 0))


def _ink(pixels):
    """The drawn part of an RGB crop: the crop of its bounding box of non-background pixels."""
    drawn = (pixels != torch.tensor(BACKGROUND, dtype=torch.uint8)).any(dim=-1)
    ys, xs = torch.nonzero(drawn, as_tuple=True)
    return pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(ys) else None


def _rendered_alone(text):
    """text drawn on its own by PIL in the default font: what a column label must look like."""
    image = Image.new("RGB", (400, 40), BACKGROUND)
    ImageDraw.Draw(image).text((10, 10), text, fill=(235, 235, 235), font=ImageFont.load_default())
    return _ink(torch.from_numpy(np.asarray(image).copy()))


def test_video_grid_labels_each_column_with_its_prompt(tmp_path):
    prompts = ["a red car", "the dog", "sun"]  # each fits on one line of a 64-pixel tile
    videos = torch.zeros(3, 2, 3, 16, 16)
    plain, plain_layout = render_video_grid({"before": videos, "after": videos})
    frames, layout = render_video_grid({"before": videos, "after": videos}, column_labels=prompts)
    assert plain_layout.header_height == 0 and layout.header_height > 0
    assert layout.tile_origin(1, 2)[1] == plain_layout.tile_origin(1, 2)[1] + layout.header_height
    assert frames.shape[1] == plain.shape[1] + layout.header_height
    for column, prompt in enumerate(prompts):
        x, y, w, h = layout.column_label_box(column)
        assert (x, w) == (layout.tile_origin(0, column)[0], layout.tile_width)
        ink = _ink(frames[0, y : y + h, x : x + w])
        assert ink is not None and torch.equal(ink, _rendered_alone(prompt)), prompt  # its own prompt, in full
        # every frame carries the label; nothing is drawn outside the boxes above the clips
        assert torch.equal(frames[-1, y : y + h, x : x + w], frames[0, y : y + h, x : x + w])
    x_end = layout.column_label_box(0)[0]
    assert _ink(frames[0, : layout.header_height, :x_end]) is None  # above the row labels: empty
    x0, _, w0, _ = layout.column_label_box(0)
    x1 = layout.column_label_box(1)[0]
    assert _ink(frames[0, : layout.header_height, x0 + w0 : x1]) is None  # the gap between two labels

    write_video_grid({"before": videos, "after": videos}, tmp_path / "grid.gif", column_labels=prompts)
    with Image.open(tmp_path / "grid.gif") as gif:
        assert gif.size == layout.size
        x, y, w, h = layout.column_label_box(0)
        shown = torch.from_numpy(np.asarray(gif.convert("RGB").crop((x, y, x + w, y + h))).copy())
        assert torch.equal(_ink(shown), _rendered_alone(prompts[0]))
    with pytest.raises(InputError, match="column_labels must be 3 strings"):
        render_video_grid({"before": videos}, column_labels=prompts[:2])


def test_long_prompts_are_wrapped_to_the_tile_width():
    font = ImageFont.load_default()
    text = "a yellow triangle moving slowly to the right over a green field at dawn"
    lines = wrap_label(text, font, 100, max_lines=10)
    assert len(lines) > 1 and " ".join(lines) == text  # broken at spaces only, nothing lost
    assert all(font.getlength(line) <= 100 for line in lines)
    assert all(font.getlength(f"{a} {b.split()[0]}") > 100 for a, b in zip(lines, lines[1:]))  # greedy: lines full
    cut = wrap_label(text, font, 100, max_lines=2)
    assert cut[0] == lines[0] and cut[1].endswith("...") and font.getlength(cut[1]) <= 100
    split = wrap_label("x" * 60, font, 50, max_lines=10)  # a word wider than the tile is split
    assert "".join(split) == "x" * 60 and len(split) > 1 and all(font.getlength(line) <= 50 for line in split)
    assert wrap_label("", font, 50) == []


def test_trainer_labels_the_sample_grid_with_the_held_out_prompts(tmp_path, monkeypatch):
    import dancegrpo_hpc.outputs as outputs
    from trainer_utils import TinyWorld, tiny_config

    from dancegrpo_hpc.rl.trainer import Trainer

    calls = []
    monkeypatch.setattr(outputs, "write_video_grid", lambda videos, path, **kw: calls.append((videos, kw)))
    world = TinyWorld(eval_prompts=3)
    trainer = Trainer(tiny_config(tmp_path, logging={"sample_grid": True}, train={"iterations": 1},
                                  data={"eval_prompts": 3}, eval={"samples_per_prompt": 1}), world=world)
    try:
        trainer.train()
    finally:
        trainer.close()
    (videos, kw), = calls
    assert kw["column_labels"] == ["held out 0", "held out 1", "held out 2"]
    assert videos["after"].shape[0] == len(kw["column_labels"])


def test_video_grid_rejects_mismatched_rows(tmp_path):
    with pytest.raises(InputError, match="row 'after' has shape"):
        write_video_grid({"before": torch.zeros(1, 2, 3, 4, 4), "after": torch.zeros(1, 3, 3, 4, 4)}, tmp_path / "g.gif")
    with pytest.raises(InputError, match=r"\[N, F, 3, H, W\]"):
        write_video_grid({"before": torch.zeros(2, 3, 4, 4)}, tmp_path / "g.gif")


def test_summary_round_trip_and_line(tmp_path):
    summary = {"reward_before": 0.4, "reward_after": 0.5, "iterations": 200, "wall_s": 3725.2,
               "rewards": {"hps": [0.2, 0.3]}}
    path = write_summary(tmp_path, summary)
    assert json.loads(path.read_text()) == summary == read_summary(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    assert format_summary_line(summary) == "reward 0.4000 -> 0.5000 (+25.0%) in 200 iterations, 1h02m05s"
    assert "n/a" in format_summary_line({**summary, "reward_before": 0.0})
    with pytest.raises(InputError, match="missing wall_s"):
        format_summary_line({"reward_before": 0, "reward_after": 1, "iterations": 1})


def test_progress_prints_lines_on_rank_zero_only():
    bar, lines = io.StringIO(), io.StringIO()
    with TrainingProgress(3, bar_to=bar, lines_to=lines) as progress:  # not a TTY: no bar
        progress.update(1, {"reward_mean": 0.123456, "loss": -0.5, "tag": "x", "flag": True, "per": [1, 2]})
    assert lines.getvalue() == "iter 1/3 | reward_mean 0.1235 | loss -0.5 | tag x\n"
    assert bar.getvalue() == ""

    bar, lines = io.StringIO(), io.StringIO()
    with TrainingProgress(3, bar_to=bar, lines_to=lines, force_bar=True) as progress:
        progress.update(2, {"reward_mean": 0.25, "loss": 1.5})
    assert "2/3" in bar.getvalue() and "reward_mean=0.25" in bar.getvalue() and "loss=1.5" in bar.getvalue()

    bar, lines = io.StringIO(), io.StringIO()
    with TrainingProgress(3, rank=1, force_bar=True, bar_to=bar, lines_to=lines) as progress:
        progress.update(1, {"reward_mean": 0.25})
    assert bar.getvalue() == lines.getvalue() == ""
    assert format_metrics_line(7, {"kl": 1e-5}) == "iter 7 | kl 1e-05"
