"""What both schedulers' steps derive from the model output: the clean sample and the noise."""

import torch

from diffad.errors import ConfigError


def predict_original_and_noise(scheduler, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t):
    """(x0, epsilon) from the model output at cumulative alpha `alpha_prod_t`, x0 clipped or
    thresholded as the scheduler's config says (epsilon from the unclipped x0, as diffusers does)."""
    beta_prod_t = 1 - alpha_prod_t
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        original = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        noise = model_output
    elif prediction_type == "sample":
        original = model_output
        noise = (sample - alpha_prod_t ** (0.5) * original) / beta_prod_t ** (0.5)
    elif prediction_type == "v_prediction":
        original = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        noise = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    else:
        raise ConfigError(f"prediction_type {prediction_type!r} must be epsilon, sample or v_prediction")

    if scheduler.config.thresholding:
        original = scheduler._threshold_sample(original)
    elif scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        original = original.clamp(-limit, limit)
    return original, noise
