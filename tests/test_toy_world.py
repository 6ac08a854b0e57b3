"""The embedded toy world: procedural clips, prompt split, text encoder, fixed VAE,
programmatic rewards (ordered against corrupted clips) and the committed
pretrained checkpoint (it loads, is small, and samples better than random init)."""

import itertools
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.models.hunyuan_video import preset
from dancegrpo_hpc.models.toy import TOY_CHECKPOINT, ToyTextEncoder, ToyVAE, ToyWorld, load_toy_model
from dancegrpo_hpc.models.toy.generate import sample_videos
from dancegrpo_hpc.models.toy.world import COLOURS, DIRECTIONS, SHAPES
from dancegrpo_hpc.rewards import toy as rewards

WORLD = ToyWorld()


def render(prompts, seed=0):
    return WORLD.render(prompts, torch.Generator().manual_seed(seed))


def gaussian_blur(videos, sigma=1.5):
    k = torch.exp(-torch.arange(-4, 5, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = videos.flatten(0, 2)[:, None]
    x = F.conv2d(F.pad(x, (4, 4, 0, 0), mode="replicate"), k.view(1, 1, 1, 9))
    x = F.conv2d(F.pad(x, (0, 0, 4, 4), mode="replicate"), k.view(1, 1, 9, 1))
    return x.view_as(videos)


# ---------------------------------------------------------------------------------- world
def test_render_is_deterministic_and_well_formed():
    prompts = WORLD.prompts("train")[:6]
    a, b, c = render(prompts, 0), render(prompts, 0), render(prompts, 1)
    assert a.shape == (6, 8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    small = ToyWorld(frames=5, height=16, width=24).render(prompts[:2])
    assert small.shape == (2, 5, 3, 16, 24)


@pytest.mark.parametrize("colour,shape,direction", [("red", "circle", "left"), ("cyan", "square", "up"),
                                                    ("yellow", "triangle", "down"), ("blue", "square", "right")])
def test_render_shows_the_prompt(colour, shape, direction):
    """Independent reading of the pixels: the brightest pixels have the prompt's colour,
    the shape keeps its area on every frame (stays in frame), and its centroid moves
    1-2 px per frame along the prompt's direction and not across it."""
    videos = render([f"a {colour} {shape} moving {direction}"] * 4, seed=3)
    fg = (videos - videos[:, :, :, :1, :1]).abs().sum(dim=2) > 0.5  # background: the corner pixel
    full = (videos - torch.tensor(COLOURS[colour]).view(1, 1, 3, 1, 1)).abs().amax(dim=2) < 1e-6
    assert full.sum(dim=(2, 3)).min() >= 10  # every frame shows fully covered pixels of the exact colour
    area = fg.sum(dim=(2, 3)).float()
    # a small triangle's raster area changes with its sub-pixel offset: allow 25%
    assert (area.amin(dim=1) / area.amax(dim=1)).min() > 0.75
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cx = (fg * xs).sum(dim=(2, 3)) / area
    cy = (fg * ys).sum(dim=(2, 3)) / area
    step = torch.stack([cx.diff(dim=1), cy.diff(dim=1)], dim=-1).mean(dim=1)  # [4, 2] px per frame
    unit = torch.tensor(DIRECTIONS[direction])
    along = step @ unit
    across = (step - along[:, None] * unit).norm(dim=-1)
    assert along.min() > 0.9 and along.max() < 2.1 and across.max() < 0.1
    # Shapes are told apart by how much of their bounding box they fill.
    box = (fg.any(dim=2).sum(dim=2) * fg.any(dim=3).sum(dim=2)).float()
    fill = (area / box).mean().item()
    expected = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    assert abs(fill - expected) < 0.12


def test_prompt_split_is_disjoint_complete_and_seeded():
    train, held_out = WORLD.prompts("train"), WORLD.prompts("eval")
    every = {f"a {c} {s} moving {d}" for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)}
    assert len(every) == 72 and len(COLOURS) >= 4 and len(SHAPES) >= 3
    assert not set(train) & set(held_out)
    assert set(train) | set(held_out) == every and len(train) + len(held_out) == 72
    assert len(held_out) == round(0.2 * 72)
    assert {w for p in train for w in WORLD.parse(p)} == set(COLOURS) | set(SHAPES) | set(DIRECTIONS)
    assert ToyWorld().prompts("eval") == held_out
    assert ToyWorld(seed=1).prompts("eval") != held_out
    with pytest.raises(InputError, match="split"):
        WORLD.prompts("test")


def test_parse_and_its_errors():
    assert WORLD.parse("a red circle moving left") == ("red", "circle", "left")
    assert WORLD.parse("The Magenta TRIANGLE, moving up.") == ("magenta", "triangle", "up")
    with pytest.raises(InputError, match="'purple'"):
        WORLD.parse("a purple circle moving left")
    with pytest.raises(InputError, match="exactly one colour"):
        WORLD.parse("a circle moving left")
    with pytest.raises(InputError, match="exactly one direction"):
        WORLD.parse("a red circle moving left up")
    with pytest.raises(InputError, match="unknown word"):
        WORLD.render(["a red hexagon moving left"])


# ---------------------------------------------------------------------------------- text encoder
def test_text_encoder_shapes_mask_and_determinism():
    enc = ToyTextEncoder(embed_dim=32, pooled_dim=24, max_tokens=8, seed=0)
    prompts = ["a red circle moving left", "a blue circle moving left", ""]
    embeds, mask, pooled = enc.encode(prompts)
    assert embeds.shape == (3, 8, 32) and mask.shape == (3, 8) and pooled.shape == (3, 24)
    assert embeds.dtype == torch.float32 and pooled.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [6, 6, 1]  # start token + words; the empty prompt keeps the start token
    assert torch.all(embeds[mask == 0] == 0)
    assert torch.allclose(pooled.pow(2).mean(dim=1), torch.ones(3), atol=1e-5)
    again = ToyTextEncoder(embed_dim=32, pooled_dim=24, max_tokens=8, seed=0).encode(prompts)
    assert all(torch.equal(a, b) for a, b in zip((embeds, mask, pooled), again))
    assert not torch.equal(ToyTextEncoder(32, 24, 8, seed=1).encode(prompts)[0], embeds)
    # One changed word changes its token only, and the pooled vector.
    changed = (embeds[0] - embeds[1]).abs().sum(dim=1) > 0
    assert changed.tolist() == [False, False, True, False, False, False, False, False]
    assert (pooled[0] - pooled[1]).norm() > 0.3
    with pytest.raises(InputError, match="'purple'"):
        enc.encode(["a purple circle"])
    with pytest.raises(InputError, match="max_tokens"):
        ToyTextEncoder(max_tokens=4).encode(["a red circle moving left"])


# ---------------------------------------------------------------------------------- VAE
def test_vae_round_trip_layout_and_normalisation():
    vae = ToyVAE()
    videos = render(WORLD.prompts("train") * 2, seed=5)
    latent = vae.encode(videos)
    assert latent.shape == (len(videos), 12, 8, 16, 16)
    assert (vae.decode(latent) - videos).abs().max() <= 1e-6
    # Independent reading of channel 0: the luminance average of each 2x2 block,
    # (sum over the block's 12 values) / (2 sqrt 3), then the affine normalisation.
    block_sum = F.avg_pool2d(videos.sum(dim=2).flatten(0, 1), 2).view(len(videos), 8, 16, 16) * 4
    expected = (block_sum / (2 * math.sqrt(3)) - vae.mean[0, 0, 0, 0, 0]) / vae.std[0, 0, 0, 0, 0]
    assert torch.allclose(latent[:, 0], expected, atol=1e-5)
    per_channel = latent.transpose(0, 1).flatten(1)
    assert per_channel.mean(dim=1).abs().max() < 0.1  # zero-mean per channel, unit variance overall
    assert 0.9 < per_channel.pow(2).mean().sqrt() < 1.1
    wild = vae.decode(torch.randn(2, 12, 8, 16, 16) * 5)
    assert wild.min() >= 0 and wild.max() <= 1
    with pytest.raises(InputError, match="latent"):
        vae.decode(torch.zeros(1, 4, 8, 16, 16))


# ---------------------------------------------------------------------------------- rewards
@pytest.fixture(scope="module")
def truth():
    prompts = WORLD.all_prompts()
    return render(prompts, seed=11), prompts


def test_rewards_rank_ground_truth_above_corruptions(truth):
    videos, prompts = truth
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(videos.shape, generator=gen)
    shuffled = [prompts[i] for i in torch.roll(torch.arange(len(prompts)), 7).tolist()]
    frame_order = torch.stack([torch.randperm(8, generator=gen) for _ in prompts])
    frame_shuffled = torch.stack([v[order] for v, order in zip(videos, frame_order)])
    blurred = gaussian_blur(videos)

    ta = rewards.text_alignment(videos, prompts, WORLD)
    mq = rewards.motion_quality(videos, prompts)
    vq = rewards.visual_quality(videos, prompts)
    assert ta.mean() > 0.95 and mq.mean() > 0.85 and vq.mean() > 0.9
    assert rewards.text_alignment(videos, shuffled, WORLD).mean() < ta.mean() - 0.5
    assert rewards.motion_quality(frame_shuffled, prompts).mean() < mq.mean() - 0.5
    assert rewards.visual_quality(blurred, prompts).mean() < vq.mean() - 0.25
    assert rewards.text_alignment(noise, prompts, WORLD).mean() < ta.mean() - 0.7
    assert rewards.motion_quality(noise, prompts).mean() < mq.mean() - 0.3
    assert rewards.visual_quality(noise, prompts).mean() < vq.mean() - 0.7


def test_text_alignment_gives_partial_credit():
    """Right colour and shape but the opposite direction: about two thirds; a wrong
    colour costs about a third."""
    videos = render(["a green triangle moving right"] * 4, seed=2)
    full = rewards.text_alignment(videos, ["a green triangle moving right"] * 4, WORLD)
    wrong_way = rewards.text_alignment(videos, ["a green triangle moving left"] * 4, WORLD)
    wrong_colour = rewards.text_alignment(videos, ["a blue triangle moving right"] * 4, WORLD)
    assert full.min() > 0.95
    assert torch.allclose(wrong_way, torch.full((4,), 2 / 3), atol=0.05)
    assert torch.allclose(wrong_colour, torch.full((4,), 2 / 3), atol=0.05)


def test_rewards_are_bounded_finite_and_deterministic(truth):
    videos, prompts = truth[0][:4], truth[1][:4]
    weird = torch.stack([torch.zeros(8, 3, 32, 32), torch.ones(8, 3, 32, 32),
                         torch.full((8, 3, 32, 32), float("nan")), videos[0] * 1e6])
    for name, fn in rewards.TOY_REWARDS.items():
        assert fn.name == name
        for clip in (videos, weird, torch.rand(4, 8, 3, 32, 32)):
            score = fn(clip, prompts)
            assert score.shape == (4,) and score.dtype == torch.float32
            assert torch.isfinite(score).all() and score.min() >= 0 and score.max() <= 1
            assert torch.equal(score, fn(clip.clone(), prompts))
        assert fn(weird, prompts)[:2].max() < 1e-3  # a blank frame shows no shape
    assert set(rewards.TOY_REWARDS) == {"toy_text_alignment", "toy_motion", "toy_visual"}
    with pytest.raises(InputError, match="prompts"):
        rewards.text_alignment(videos, prompts[:3], WORLD)
    with pytest.raises(InputError, match="videos"):
        rewards.visual_quality(videos[:, :, :1], prompts)


def test_toy_rewards_are_registered():
    from dancegrpo_hpc.rewards import build_rewards

    built = build_rewards([{"name": "toy_text_alignment"}, {"name": "toy_motion"}, {"name": "toy_visual"}])
    videos, prompts = render(WORLD.prompts("eval")[:2]), WORLD.prompts("eval")[:2]
    for spec, reward in built:
        assert torch.equal(reward(videos, prompts), rewards.TOY_REWARDS[spec.name](videos, prompts))


# ---------------------------------------------------------------------------------- checkpoint
def test_toy_preset_matches_the_world():
    cfg, vae, enc = preset("toy"), ToyVAE(), ToyTextEncoder()
    c, f, h, w = vae.latent_shape(WORLD.frames, WORLD.height, WORLD.width)
    assert cfg.in_channels == cfg.out_channels == c and not cfg.guidance_embeds
    assert (cfg.text_embed_dim, cfg.pooled_projection_dim) == (enc.embed_dim, enc.pooled_dim)
    assert (f // cfg.patch_size_t) * (h // cfg.patch_size) * (w // cfg.patch_size) <= 512


def test_checkpoint_is_small_loads_and_beats_random_init():
    size = sum(os.path.getsize(os.path.join(TOY_CHECKPOINT, n)) for n in os.listdir(TOY_CHECKPOINT))
    assert size <= 10 * 1024 ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT

        trained = load_toy_model().eval()
        torch.manual_seed(0)
        untrained = HunyuanVideoDiT(preset("toy")).eval()
    assert trained.config.replace(variant="toy") == preset("toy")
    prompts = WORLD.prompts("eval") * 2  # held out of pretraining; 28 clips (fewer are too noisy to rank)
    scores = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        videos = sample_videos(model, prompts, steps=12, shift=3.0, generator=torch.Generator().manual_seed(1))
        assert videos.shape == (len(prompts), 8, 3, 32, 32)
        scores[name] = {"text": rewards.text_alignment(videos, prompts, WORLD).mean().item(),
                        "motion": rewards.motion_quality(videos, prompts).mean().item(),
                        "visual": rewards.visual_quality(videos, prompts).mean().item()}
    # the committed checkpoint is deliberately imperfect (RL has room): ground truth scores
    # about 1.0 / 0.9 / 1.0, the checkpoint about 0.3 / 0.1 / 0.4, random init 0.14 / 0.01 / 0.19
    trained, untrained = scores["trained"], scores["untrained"]
    assert all(trained[k] > untrained[k] + 0.05 for k in trained), scores
    assert sum(trained.values()) > 1.8 * sum(untrained.values()), scores
    with pytest.raises(InputError, match="not found"):
        load_toy_model(os.path.join(TOY_CHECKPOINT, "missing"))
