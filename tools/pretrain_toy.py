"""Pretrains the toy HunyuanVideo DiT (preset "toy") by flow matching on the toy world
and writes the checkpoint that dancegrpo_hpc.models.toy.load_toy_model reads.

Flow matching as our sampler integrates it: x_t = (1 - sigma) x0 + sigma noise, the
model predicts v = noise - x0 at timestep sigma * 1000, sigma ~ logit-normal(0, 1).
Train prompts only (the world's eval prompts stay unseen); 10% of the prompts are
replaced by the empty prompt so the checkpoint also supports classifier-free guidance.
Deterministic for a given seed and thread count (unless --minutes cuts it short).
CPU: about 13 minutes on 2 idle cores (0.36 s per step of 16 clips). The committed
checkpoint is this script's output with its defaults.

The end report compares toy rewards of ODE samples with ground-truth renders and a
randomly initialised model. The checkpoint is meant to be imperfect (room for RL).

    python tools/pretrain_toy.py [--steps 2100] [--minutes 15] [--out dancegrpo_hpc/models/toy/checkpoint]
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

from dancegrpo_hpc.checks import InputError  # noqa: E402
from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset  # noqa: E402
from dancegrpo_hpc.models.hunyuan_video.weights import save_diffusers  # noqa: E402
from dancegrpo_hpc.models.toy import TOY_CHECKPOINT, ToyTextEncoder, ToyVAE, ToyWorld  # noqa: E402
from dancegrpo_hpc.models.toy.generate import sample_videos  # noqa: E402
from dancegrpo_hpc.rewards.toy import motion_quality, text_alignment, visual_quality  # noqa: E402

ADALN_NAMES = ("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear", "proj_out")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2100, help="optimizer steps (the run stops earlier if --minutes runs out)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget for training")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--train-shift", type=float, default=3.0,
                   help="time shift of the training sigmas: shift*s / (1 + (shift-1)*s), s ~ logit-normal(0, 1); "
                        "3 matches the sampling shift, so the high-noise steps that place the object (and keep it "
                        "in place across frames) are trained (13.6%% of draws above sigma 0.9, not 1.4%%)")
    p.add_argument("--ema", type=float, default=0.995, help="decay of the weight average that is saved and sampled")
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="fraction of prompts replaced by the empty prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", default=None,
                   help="training-state file: written every 100 steps and resumed from when it exists (the same "
                        "result as an uninterrupted run), for shared machines where a long job may be killed")
    p.add_argument("--out", default=TOY_CHECKPOINT, help="checkpoint folder (diffusers layout)")
    p.add_argument("--eval-every", type=int, default=0, help="also report eval-prompt rewards every N steps (0: only at the end)")
    p.add_argument("--eval-samples", type=int, default=2, help="samples per eval prompt in the final report")
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--shift", type=float, default=3.0)
    return p.parse_args(argv)


def zero_init_modulation(model: torch.nn.Module) -> None:
    """DiT's adaLN-Zero start: every block begins as the identity and the output as zero."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(ADALN_NAMES):
                for param in module.parameters(recurse=False):
                    param.zero_()


class WeightAverage:
    """Exponential moving average of the parameters (sampled and saved instead of the
    raw weights: far cleaner samples for the same number of steps)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.params = decay, [p for p in model.parameters()]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short memory early on
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the model's weights and the average (call twice to undo)."""
        for p, a in zip(self.params, self.average):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def rewards_of(videos, prompts, world) -> dict:
    return {"text_alignment": text_alignment(videos, prompts, world).mean().item(),
            "motion": motion_quality(videos, prompts).mean().item(),
            "visual": visual_quality(videos, prompts).mean().item()}


def evaluate(model, prompts, world, encoder, vae, args) -> dict:
    model.eval()
    videos = sample_videos(model, prompts, steps=args.sample_steps, shift=args.shift,
                           generator=torch.Generator().manual_seed(args.seed + 1), world=world, text_encoder=encoder, vae=vae)
    model.train()
    return rewards_of(videos, prompts, world)


def save_state(path, model, optimizer, average, generator, step, smoothed) -> None:
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "average": average.average,
                "generator": generator.get_state(), "step": step, "smoothed": smoothed}, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous state


def load_state(path) -> dict:
    """The --state file, loaded without running pickled code (weights_only: tensors, numbers and
    containers, all save_state writes); anything else is one line naming --state."""
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: not for a file we did not write
        raise InputError(f"--state {path}: holds pickled objects other than tensors and numbers, refused (unpickling "
                         "them could run code); this tool never writes those: delete the file to start over") from None
    except Exception as exc:  # RuntimeError / EOFError: a file cut short
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"--state {path}: not a training-state file of this tool ({first}); delete it to start "
                         "over") from None
    missing = [k for k in ("model", "optimizer", "average", "generator", "step", "smoothed")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"--state {path}: not a training-state file of this tool (no {', '.join(missing)}); "
                         "delete it to start over")
    return state


def train(model, world, encoder, vae, args) -> WeightAverage:
    prompts = world.prompts("train") + [""]  # the last entry: the unconditional (empty) prompt
    embeds, masks, pooled = encoder.encode(prompts)
    n_train = len(prompts) - 1
    gen = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    average = WeightAverage(model, args.ema)
    eval_prompts = world.prompts("eval")
    first, smoothed = 0, None
    if args.state and os.path.exists(args.state):
        state = load_state(args.state)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        average.average = state["average"]
        gen.set_state(state["generator"])
        first, smoothed = state["step"], state["smoothed"]
        print(f"resumed from {args.state} at step {first}", flush=True)
    start, step = time.time(), first
    for step in range(first, args.steps):
        if time.time() - start > 60 * args.minutes:
            print(f"time budget of {args.minutes} min reached after {step} steps", flush=True)
            break
        ids = torch.randint(0, n_train, (args.batch,), generator=gen)
        with torch.no_grad():
            x0 = vae.encode(world.render([prompts[i] for i in ids.tolist()], gen))
        drop = torch.rand(args.batch, generator=gen) < args.cfg_dropout
        ids = torch.where(drop, torch.full_like(ids, n_train), ids)
        noise = torch.randn(x0.shape, generator=gen)
        u = torch.sigmoid(torch.randn(args.batch, generator=gen))  # logit-normal(0, 1)
        sigma = args.train_shift * u / (1 + (args.train_shift - 1) * u)
        s = sigma.view(-1, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        pred = model(x_t, sigma * 1000.0, embeds[ids], masks[ids], pooled[ids])
        loss = (pred - (noise - x0)).pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        average.update(step)
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  smoothed {smoothed:.4f}  lr {lr_at(step, args):.2e}  "
                  f"{time.time() - start:6.1f}s", flush=True)
        if args.state and (step + 1) % 100 == 0:
            save_state(args.state, model, optimizer, average, gen, step + 1, smoothed)
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            average.swap()
            r = evaluate(model, eval_prompts, world, encoder, vae, args)
            average.swap()
            print("  eval " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    print(f"trained to step {step + 1} ({time.time() - start:.1f}s in this run); final loss (smoothed) {smoothed:.4f}",
          flush=True)
    return average


def report(model, world, encoder, vae, args) -> None:
    prompts = world.prompts("eval") * args.eval_samples
    truth = rewards_of(world.render(prompts, torch.Generator().manual_seed(args.seed + 2)), prompts, world)
    trained = evaluate(model, prompts, world, encoder, vae, args)
    torch.manual_seed(args.seed)
    random_model = HunyuanVideoDiT(preset("toy"))
    untrained = evaluate(random_model, prompts, world, encoder, vae, args)
    print(f"\nmean toy rewards on {len(prompts)} eval-prompt clips (held out of training), ODE "
          f"{args.sample_steps} steps, shift {args.shift}:")
    print(f"{'':24s}{'text_alignment':>16s}{'motion':>10s}{'visual':>10s}")
    for name, r in (("ground truth renders", truth), ("pretrained samples", trained), ("random-init samples", untrained)):
        print(f"{name:24s}{r['text_alignment']:16.3f}{r['motion']:10.3f}{r['visual']:10.3f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    world, encoder, vae = ToyWorld(), ToyTextEncoder(), ToyVAE()
    config = preset("toy")
    model = HunyuanVideoDiT(config)
    zero_init_modulation(model)
    print(f"toy DiT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"{len(world.prompts('train'))} train prompts, {len(world.prompts('eval'))} held-out eval prompts", flush=True)
    model.train()
    try:
        average = train(model, world, encoder, vae, args)
    except InputError as error:
        print(f"pretrain_toy: {error}", file=sys.stderr)
        return 2
    average.swap()  # keep the averaged weights
    model.eval()
    save_diffusers(model, args.out)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"saved {args.out} ({size / 1e6:.2f} MB)", flush=True)
    report(model, world, encoder, vae, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
