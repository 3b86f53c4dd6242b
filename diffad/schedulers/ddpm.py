"""A DDPM scheduler whose step adds the noise it is given (simplex or Gaussian)."""

import torch
from diffusers import DDPMScheduler, SchedulerMixin  # noqa: F401  (diffusers finds the base class here on reload)
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from diffad.errors import ConfigError
from diffad.schedulers.prediction import predict_original_and_noise


class NoiseDDPMScheduler(DDPMScheduler):
    """diffusers' DDPMScheduler (same config, save/load) with `step(..., variance_noise=...)`.

    Without `variance_noise` the step is diffusers' own, Gaussian noise drawn from `generator`.
    With it, the step is the same posterior mean plus the posterior standard deviation times the
    given noise, as DDIMScheduler already allows; AnoDDPM passes simplex noise here.
    """

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        variance_noise: torch.Tensor | None = None,
    ) -> DDPMSchedulerOutput | tuple:
        if variance_noise is None:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if generator is not None:
            raise ConfigError("pass either `generator` or `variance_noise` to step, not both")
        if variance_noise.shape != model_output.shape:
            raise ConfigError(
                f"variance_noise has shape {tuple(variance_noise.shape)}, the model output "
                f"{tuple(model_output.shape)}: make the noise with the sample's shape"
            )

        # The rest follows DDPMScheduler.step (diffusers 0.42) with the draw replaced by variance_noise.
        t = timestep
        prev_t = self.previous_timestep(t)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in [
            "learned",
            "learned_range",
        ]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        pred_original_sample, _ = predict_original_and_noise(self, model_output, sample, alpha_prod_t)

        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        if t > 0:
            variance_noise = variance_noise.to(device=model_output.device, dtype=model_output.dtype)
            variance = self._get_variance(t, predicted_variance=predicted_variance)
            if self.variance_type == "fixed_small_log":
                pred_prev_sample = pred_prev_sample + variance * variance_noise
            elif self.variance_type == "learned_range":
                pred_prev_sample = pred_prev_sample + torch.exp(0.5 * variance) * variance_noise
            else:
                pred_prev_sample = pred_prev_sample + variance**0.5 * variance_noise

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)
