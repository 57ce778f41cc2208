"""Motion VAE models: pose encoder, single and mixture-of-experts decoders, VQ bottleneck, losses."""
from .decoders import MixtureDecoder, PoseDecoder
from .encoder import PoseEncoder
from .losses import KLSchedule, kl_divergence, kl_per_dimension, reconstruction_loss
from .quantizer import EMAQuantizer
from .vae import ModelSpec, MotionVAE, NextFrameDecoder, next_frame_decoder

__all__ = ["EMAQuantizer", "KLSchedule", "MixtureDecoder", "ModelSpec", "MotionVAE", "NextFrameDecoder",
           "PoseDecoder", "PoseEncoder", "kl_divergence", "kl_per_dimension", "next_frame_decoder",
           "reconstruction_loss"]
