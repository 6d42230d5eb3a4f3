"""The networks, in plain Flax linen: the SFMNet generator, its blocks, the two
discriminators of the GAN stage and the perceptual loss's VGG."""

from sfmnet_jax.model.blocks import ChannelAttention, FreqBlock, FuseBlock, ResBlock, ResidualGroup
from sfmnet_jax.model.discriminators import (FrequencyDiscriminator, SpatialDiscriminator,
                                             init_discriminator)
from sfmnet_jax.model.generator import (SFMNet, abstract_variables, count_params, init_generator,
                                        init_variables, jitted_apply)
from sfmnet_jax.model.layers import ConvAct, Down, Up
from sfmnet_jax.model.vgg import VGGFeatures

__all__ = ["ChannelAttention", "ConvAct", "Down", "FreqBlock", "FrequencyDiscriminator",
           "FuseBlock", "ResBlock", "ResidualGroup", "SFMNet", "SpatialDiscriminator", "Up",
           "VGGFeatures", "abstract_variables", "count_params", "init_discriminator",
           "init_generator", "init_variables", "jitted_apply"]
