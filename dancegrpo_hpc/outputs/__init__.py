"""What a run leaves in its output directory: metrics.jsonl and TensorBoard
scalars, reward curves, before/after video grids, summary.json; and its console
progress."""

from .metrics import MetricsLog, read_metrics
from .plots import plot_reward_curve, reward_curve_keys
from .progress import TrainingProgress, format_metrics_line
from .summary import format_summary_line, read_summary, write_summary
from .video_grid import VideoGridLayout, render_video_grid, write_video_grid

__all__ = [
    "MetricsLog", "TrainingProgress", "VideoGridLayout", "format_metrics_line", "format_summary_line",
    "plot_reward_curve", "read_metrics", "read_summary", "render_video_grid", "reward_curve_keys", "write_summary",
    "write_video_grid",
]
