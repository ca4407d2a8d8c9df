"""Noise schedules and samplers; a sampler receives the network (wrapped in a Denoiser) and never owns it."""

from gen_lightning.samplers.ddim import DDIMSampler
from gen_lightning.samplers.ddpm import DDPMSampler, DiffusionSampler
from gen_lightning.samplers.schedules import CosineSchedule, Denoiser, LinearSchedule, NoiseSchedule

__all__ = ["CosineSchedule", "DDIMSampler", "DDPMSampler", "Denoiser", "DiffusionSampler", "LinearSchedule", "NoiseSchedule"]
