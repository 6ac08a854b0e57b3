"""The README's library example runs as written."""

import os
import re

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"## Using the library\s+```python\n(.*?)```", text, re.S).group(1)
    batch = 24
    namespace = {
        "model_fn": lambda x, sigma, step: -x,  # any velocity model
        "noise": torch.randn(batch, 4, 3, 8, 8),
        "rewards": torch.randn(batch),
        "i": 5,
    }
    namespace["model_out"] = torch.randn(batch, 4, 3, 8, 8, requires_grad=True)
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["traj"].latents.shape == (batch, 17, 4, 3, 8, 8)
    namespace["loss"].backward()
    assert namespace["model_out"].grad is not None and torch.isfinite(namespace["loss"])
