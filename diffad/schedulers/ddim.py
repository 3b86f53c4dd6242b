"""A DDIM scheduler that also runs an explicit list of timesteps (for partial denoising)."""

import numpy as np
import torch
from diffusers import DDIMScheduler, SchedulerMixin  # noqa: F401  (diffusers finds the base class here on reload)
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from diffad.errors import ConfigError
from diffad.schedulers.prediction import predict_original_and_noise


class NoiseDDIMScheduler(DDIMScheduler):
    """diffusers' DDIMScheduler (same config, save/load); `step` already takes `variance_noise`.

    Adds `set_timesteps(timesteps=[...])` as DDPMScheduler has it: each step then goes from a
    timestep to the next one in the list, and the last one to the clean sample. diffusers' DDIM
    always steps by `num_train_timesteps // num_inference_steps`, which cannot end a partial
    schedule (AnoDDPM's 250 of 1000 steps) exactly at the clean sample.
    """

    custom_timesteps = False

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        if timesteps is None:
            if num_inference_steps is None:
                raise ConfigError("set_timesteps needs num_inference_steps or timesteps")
            self.custom_timesteps = False
            return super().set_timesteps(num_inference_steps, device=device)
        if num_inference_steps is not None:
            raise ConfigError("pass either num_inference_steps or timesteps to set_timesteps, not both")
        timesteps = np.asarray(list(timesteps), dtype=np.int64)
        if timesteps.ndim != 1 or len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0):
            raise ConfigError(f"timesteps must be a non-empty descending list, got {timesteps.tolist()}")
        if timesteps[0] >= self.config.num_train_timesteps or timesteps[-1] < 0:
            raise ConfigError(f"timesteps must lie in [0, {self.config.num_train_timesteps - 1}]")
        self.custom_timesteps = True
        self.num_inference_steps = len(timesteps)
        self.timesteps = torch.from_numpy(timesteps).to(device)

    def previous_timestep(self, timestep) -> int:
        """The timestep the step from `timestep` lands on (-1: the clean sample)."""
        if not self.custom_timesteps:
            return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
        index = (self.timesteps == int(timestep)).nonzero(as_tuple=True)[0]
        if len(index) == 0:
            raise ConfigError(f"timestep {int(timestep)} is not in the scheduler's timesteps")
        index = int(index[0])
        return -1 if index == len(self.timesteps) - 1 else int(self.timesteps[index + 1])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        if not self.custom_timesteps:
            return super().step(
                model_output,
                timestep,
                sample,
                eta,
                use_clipped_model_output,
                generator,
                variance_noise,
                return_dict,
            )
        if variance_noise is not None and generator is not None:
            raise ConfigError("pass either `generator` or `variance_noise` to step, not both")

        # DDIMScheduler.step (diffusers 0.42) with the previous timestep taken from the list.
        prev_timestep = self.previous_timestep(timestep)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t

        pred_original_sample, pred_epsilon = predict_original_and_noise(
            self, model_output, sample, alpha_prod_t
        )

        variance = self._get_variance(timestep, prev_timestep)
        std_dev_t = eta * variance ** (0.5)
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)

        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
        if eta > 0:
            if variance_noise is None:
                variance_noise = torch.randn(
                    model_output.shape,
                    generator=generator,
                    device=model_output.device,
                    dtype=model_output.dtype,
                )
            prev_sample = prev_sample + std_dev_t * variance_noise.to(model_output.device, model_output.dtype)

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
