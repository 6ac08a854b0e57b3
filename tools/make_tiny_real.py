#!/usr/bin/env python
"""Writes the tiny real-data world that examples/tiny_t2v_real.yaml and
examples/tiny_i2v_real.yaml read (random-initialised components of the real classes: our
DiT in diffusers format, diffusers' HunyuanVideo VAE, text encoders and embedding caches,
prompt files, I2V reference images, VideoAlign on a tiny Qwen2-VL), then prints the
commands that run them. A few seconds on a CPU; no downloads. Needs the `real` extra
(diffusers, transformers): `pip install --no-build-isolation -e ".[real]"`.

    python tools/make_tiny_real.py                 # runs/tiny_real, where the configs look
    python tools/make_tiny_real.py --out /tmp/tr   # elsewhere: the commands carry path overrides

The folder is written next to --out and renamed into place, so a failed run leaves none
behind. Exit 2 with one line when --out is taken.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MARKER = "made_by_make_tiny_real"  # lets --overwrite delete only a folder this tool wrote


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tiny_real", help="folder to write (default: runs/tiny_real, the "
                                                            "configs' paths relative to the repository root)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder this tool wrote before")
    return p.parse_args(argv)


def commands(out):
    """Shell lines running the tiny configs on `out`, from the current directory."""
    from dancegrpo_hpc.testing.tiny_real import overrides

    def line(program, name, *extra):
        config = os.path.relpath(os.path.join(ROOT, "examples", name))
        return " ".join(shlex.quote(a) for a in (*program, config, *overrides(config, out), *extra))

    benchmark = ["python", os.path.relpath(os.path.join(ROOT, "tools", "benchmark.py"))]
    return [line(["dancegrpo-hpc", "validate"], "tiny_t2v_real.yaml"),
            line(["dancegrpo-hpc", "train"], "tiny_t2v_real.yaml"),
            line(["dancegrpo-hpc", "train"], "tiny_i2v_real.yaml"),
            line(benchmark, "tiny_t2v_real.yaml", "--rounds", "3")]


def main(argv=None) -> int:
    args = parse(argv)
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.extras import require_extra

    try:  # the components are diffusers' and transformers' classes: the `real` extra
        require_extra(["diffusers", "transformers"], "real", "make_tiny_real")
    except InputError as error:
        print(error, file=sys.stderr)
        return 2
    out = args.out.rstrip("/") or "/"
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        ours = os.path.isfile(os.path.join(out, MARKER))
        if not (args.overwrite and ours):
            hint = "pass --overwrite to replace it" if ours else "it was not written by this tool; choose another --out"
            print(f"make_tiny_real: --out {out!r} exists and is not empty; {hint}", file=sys.stderr)
            return 2
    from dancegrpo_hpc.testing.tiny_real import write_tiny_real

    start = time.perf_counter()
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        write_tiny_real(tmp)
        open(os.path.join(tmp, MARKER), "w").close()
        if os.path.exists(out):
            shutil.rmtree(out)  # empty, or ours (checked above)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote the tiny real-data world to {out} in {time.perf_counter() - start:.1f} s. Run it with:")
    for cmd in commands(out):
        print("  " + cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
