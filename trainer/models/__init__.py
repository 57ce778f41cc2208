"""Motion VAE models: pose encoder, single and mixture-of-experts decoders, VQ bottlenecks, motion tokenizer, losses."""
from .decoders import MixtureDecoder, PoseDecoder
from .encoder import PoseEncoder
from .losses import KLSchedule, kl_divergence, kl_per_dimension, reconstruction_loss
from .quantizer import EMAQuantizer, StraightThroughQuantizer
from .tokenizer import MotionTokenizer, TokenizerSpec
from .vae import ModelSpec, MotionVAE, NextFrameDecoder, next_frame_decoder

__all__ = ["EMAQuantizer", "KLSchedule", "MixtureDecoder", "ModelSpec", "MotionTokenizer", "MotionVAE",
           "NextFrameDecoder", "PoseDecoder", "PoseEncoder", "StraightThroughQuantizer", "TokenizerSpec",
           "kl_divergence", "kl_per_dimension", "next_frame_decoder", "reconstruction_loss"]
