"""The model-family seam (models/family.py): the registry, family detection from a
checkpoint's _class_name, family-neutral Conditioning, and HunyuanVideo behind the seam
giving the same velocity as calling the DiT directly."""

import json

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.conditioning import Conditioning, cat
from dancegrpo_hpc.config import load_config
from dancegrpo_hpc.models.family import family_names, family_of, family_of_class, get_family


def test_registry_names_and_errors():
    assert "hunyuan_video" in family_names()
    family = get_family("hunyuan_video")
    assert family.name == "hunyuan_video" and family.diffusers_class == "HunyuanVideoTransformer3DModel"
    assert family_of_class("HunyuanVideoTransformer3DModel") is family
    assert family_of(family.preset("tiny")) is family
    with pytest.raises(InputError, match="model.family 'nope' is unknown; choose one of"):
        get_family("nope")
    with pytest.raises(InputError, match="no family loads diffusers class 'UNet2DConditionModel'"):
        family_of_class("UNet2DConditionModel")
    with pytest.raises(InputError, match="model.preset 'flux-dev' is not a hunyuan_video preset"):
        family.preset("flux-dev")


def test_config_names_the_family(tmp_path):
    with pytest.raises(InputError, match="model.family"):
        load_config("examples/toy_t2v.yaml", ["model.family=nope"], paths=False)
    assert load_config("examples/toy_t2v.yaml", [], paths=False).model.family == "hunyuan_video"


def test_a_checkpoint_of_another_family_is_one_line(tmp_path):
    from dancegrpo_hpc.data.real_world import checkpoint_config

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "SomeOtherTransformer", "num_layers": 2}))
    config = load_config("examples/toy_t2v.yaml", [f"model.path={tmp_path}", "model.preset=tiny"], paths=False)
    with pytest.raises(InputError) as err:
        checkpoint_config(config)
    message = str(err.value)
    assert "\n" not in message and "SomeOtherTransformer" in message and "model.family 'hunyuan_video'" in message


def test_conditioning_is_family_neutral():
    a = Conditioning(embeds=torch.randn(3, 5, 4), pooled=torch.randn(3, 2), image_latents=None)
    assert set(a.tensors) == {"embeds", "pooled"} and a.image_latents is None and len(a) == 3
    a.negative = Conditioning(embeds=torch.zeros(3, 5, 4), pooled=torch.zeros(3, 2))
    picked = a.select(torch.tensor([2, 0]))
    assert torch.equal(picked.embeds, a.embeds[[2, 0]]) and torch.equal(picked.negative.pooled, a.negative.pooled[[2, 0]])
    both = cat(a, a.negative)
    assert len(both) == 6 and torch.equal(both.embeds[3:], a.negative.embeds) and both.negative is None
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        Conditioning(embeds=torch.zeros(2, 1), pooled=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="cannot concatenate"):
        cat(a, Conditioning(embeds=torch.zeros(1, 5, 4)))


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-i2v-token-replace"])
def test_hunyuan_velocity_through_the_seam_is_the_dit(preset_name):
    """family.velocity = the DiT at timestep sigma x 1000 with guidance x 1000 (the
    transcription of DanceGRPO's call), for text-to-video and image-to-video."""
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset
    from dancegrpo_hpc.rl.policy import VelocityOptions, velocity

    cfg = preset(preset_name)
    torch.manual_seed(0)
    model = HunyuanVideoDiT(cfg)
    x = torch.randn(2, cfg.out_channels, 2, 4, 4)
    sigma = torch.tensor([0.9, 0.4])
    image = torch.randn(2, cfg.out_channels, 1, 4, 4) if preset_name != "tiny" else None
    cond = Conditioning(embeds=torch.randn(2, 5, cfg.text_embed_dim), mask=torch.ones(2, 5, dtype=torch.long),
                        pooled=torch.randn(2, cfg.pooled_projection_dim), image_latents=image)
    guidance = 6.0 if cfg.guidance_embeds else None
    with torch.no_grad():
        got = velocity(model, x, sigma, cond, VelocityOptions(guidance=guidance))
        hidden = x if image is None else torch.cat([image, x], dim=2)
        g = None if guidance is None else torch.full((2,), 6000.0)
        expected = model(hidden, sigma * 1000, cond.embeds, cond.mask, cond.pooled, g)[:, :, -x.shape[2]:]
    assert torch.equal(got, expected)


def test_cost_model_goes_through_the_family():
    from dancegrpo_hpc.memory import dit_parameters, video_tokens
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset

    cfg = preset("tiny")
    cost = get_family("hunyuan_video").cost(cfg)
    assert cost.parameters(1, "replicated") == dit_parameters(cfg) == sum(
        p.numel() for p in HunyuanVideoDiT(cfg, device="meta").parameters())
    assert video_tokens((4, 3, 8, 6), cfg) == 3 * 4 * 3
    assert cost.conditioning_elements(7) == 7 * cfg.text_embed_dim + cfg.pooled_projection_dim


def test_from_diffusers_detects_the_family(tmp_path):
    """The public entry point: a diffusers module or folder -> our module of its family,
    whose forward takes diffusers' keyword arguments and returns the same tensor."""
    from hv_utils import diffusers_model, inputs, rel

    from dancegrpo_hpc.models import from_diffusers
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT

    ref = diffusers_model("tiny")
    ours = from_diffusers(ref)
    assert isinstance(ours, HunyuanVideoDiT)
    inp = inputs(ours.config)
    with torch.no_grad():
        assert rel(ours(**inp), ref(**inp, return_dict=False)[0]) <= 1e-5
    ref.save_pretrained(tmp_path / "transformer")
    assert isinstance(from_diffusers(str(tmp_path / "transformer")), HunyuanVideoDiT)
    with pytest.raises(InputError, match="has no config.json"):
        from_diffusers(str(tmp_path))
    with pytest.raises(InputError, match="no family loads diffusers class 'Linear'"):
        from_diffusers(torch.nn.Linear(2, 2))
