"""Importing this package registers every se_hub model with timm."""
from . import se_cifar, se_inception, se_mbconv, se_mobile, se_residual, se_shake_shake, se_vgg
from .catalog import MODELS, ModelInfo
from .se_residual import SEResNet
