"""The noise-taking schedulers against diffusers' own, and partial timesteps from strength."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffad.errors import ConfigError
from diffad.noise import simplex_noise
from diffad.schedulers import NoiseDDIMScheduler, NoiseDDPMScheduler, partial_timesteps

SHAPE = (2, 3, 8, 8)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


@pytest.mark.parametrize(
    ("variance_type", "prediction_type"),
    [("fixed_small", "epsilon"), ("fixed_small_log", "sample"), ("fixed_large", "v_prediction")],
)
def test_ddpm_step_with_gaussian_noise_equals_diffusers(variance_type, prediction_type):
    config = dict(num_train_timesteps=100, variance_type=variance_type, prediction_type=prediction_type)
    ours, theirs = NoiseDDPMScheduler(**config), DDPMScheduler(**config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    model_output, sample = _inputs()
    for t in theirs.timesteps[:3].tolist() + [0]:
        expected = theirs.step(
            model_output, t, sample, generator=torch.Generator().manual_seed(t)
        ).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        got = ours.step(model_output, t, sample, variance_noise=noise).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        # Without variance_noise the generator path is diffusers' own.
        same = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.equal(same, expected)


def test_ddim_step_with_gaussian_noise_equals_diffusers():
    ours, theirs = NoiseDDIMScheduler(num_train_timesteps=100), DDIMScheduler(num_train_timesteps=100)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    model_output, sample = _inputs(1)
    for t in theirs.timesteps.tolist():
        expected = theirs.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        got = ours.step(model_output, t, sample, eta=1.0, variance_noise=noise)
        torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_explicit_timesteps_step_like_diffusers_with_the_same_stride(prediction_type):
    # diffusers' DDIM with 10 of 100 steps strides by 10; the list 69, 59, ... must give the same steps.
    config = dict(num_train_timesteps=100, prediction_type=prediction_type, clip_sample_range=0.5)
    ours, theirs = NoiseDDIMScheduler(**config), DDIMScheduler(**config)
    ours.set_timesteps(timesteps=[69, 59, 49])
    theirs.set_timesteps(10)
    model_output, sample = _inputs(2)
    for t in (69, 59):
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t))
        expected = theirs.step(model_output, t, sample, eta=0.5, variance_noise=noise).prev_sample
        got = ours.step(model_output, t, sample, eta=0.5, variance_noise=noise).prev_sample
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # The last listed timestep lands on the clean sample (alpha_prod = 1): x_prev == predicted x0.
    last = ours.step(model_output, 49, sample)
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample)


@pytest.mark.parametrize("scheduler_class", [NoiseDDPMScheduler, NoiseDDIMScheduler])
def test_step_uses_the_simplex_noise_given(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=100)
    partial_timesteps(scheduler, 0.5, 5)
    model_output, sample = _inputs(3)
    t = int(scheduler.timesteps[0])
    kwargs = {"eta": 1.0} if scheduler_class is NoiseDDIMScheduler else {}
    a = simplex_noise(SHAPE, generator=torch.Generator().manual_seed(0))
    b = simplex_noise(SHAPE, generator=torch.Generator().manual_seed(1))
    out_a = scheduler.step(model_output, t, sample, variance_noise=a, **kwargs).prev_sample
    out_b = scheduler.step(model_output, t, sample, variance_noise=b, **kwargs).prev_sample
    out_zero = scheduler.step(
        model_output, t, sample, variance_noise=torch.zeros(SHAPE), **kwargs
    ).prev_sample
    # The step is mean + sigma * noise: the difference is proportional to the noise given.
    sigma = (out_a - out_zero) / a
    assert float(sigma.std()) < 1e-4 * float(sigma.abs().mean())
    torch.testing.assert_close(out_b - out_zero, sigma.mean() * b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        scheduler.step(model_output, t, sample, variance_noise=a, generator=torch.Generator(), **kwargs)


@pytest.mark.parametrize("scheduler_class", [NoiseDDPMScheduler, NoiseDDIMScheduler])
def test_partial_timesteps_strength_quarter_is_anoddpm_t_lambda(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=1000)
    t_start, timesteps = partial_timesteps(scheduler, 0.25, 250)
    assert t_start == 250  # AnoDDPM's t_lambda: 250 forward steps
    assert timesteps.tolist() == list(range(249, -1, -1))  # every step, as AnoDDPM's loop
    assert torch.equal(scheduler.timesteps, timesteps)
    t_start, timesteps = partial_timesteps(scheduler, 0.25, 10)
    assert t_start == 250 and timesteps.tolist() == [249, 224, 199, 174, 149, 124, 99, 74, 49, 24]
    assert partial_timesteps(scheduler, 1.0, 4)[1].tolist() == [999, 749, 499, 249]
    assert partial_timesteps(scheduler, 0.003, 10)[1].tolist() == [2, 1, 0]  # never more steps than t_start


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), "0.5"])
def test_partial_timesteps_rejects_bad_strength(strength):
    with pytest.raises(ConfigError, match="strength"):
        partial_timesteps(NoiseDDPMScheduler(), strength, 10)


def test_partial_timesteps_needs_a_scheduler_that_takes_a_list():
    with pytest.raises(ConfigError, match="NoiseDDIMScheduler"):
        partial_timesteps(DDIMScheduler(), 0.5, 10)


@pytest.mark.parametrize("scheduler_class", [NoiseDDPMScheduler, NoiseDDIMScheduler])
def test_save_load_round_trip(tmp_path, scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    scheduler.save_pretrained(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)
    assert type(loaded) is scheduler_class
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    torch.testing.assert_close(loaded.alphas_cumprod, scheduler.alphas_cumprod)
    # The saved config also loads into diffusers' own class, so pipelines stay portable.
    base = DDPMScheduler if scheduler_class is NoiseDDPMScheduler else DDIMScheduler
    assert base.from_pretrained(tmp_path).config.num_train_timesteps == 200


@pytest.mark.parametrize("cls", [NoiseDDIMScheduler, NoiseDDPMScheduler])
def test_pipeline_with_noise_scheduler_reloads_it(cls, tmp_path):
    from diffad import AnomalyDetectionPipeline
    from diffad.models import build_autoencoder, build_unet
    from diffad.scoring.scorer import AnomalyScorer

    pipe = AnomalyDetectionPipeline(
        unet=build_unet("tiny", in_channels=4, sample_size=4),
        scheduler=cls(num_train_timesteps=100),
        scorer=AnomalyScorer(resolution=16, num_inference_steps=2),
        vae=build_autoencoder("tiny", "kl"),
    )
    pipe.save_pretrained(tmp_path)
    assert type(AnomalyDetectionPipeline.from_pretrained(tmp_path).scheduler) is cls
