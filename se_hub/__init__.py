"""se_hub: the Squeeze-and-Excitation model family for timm / torch.hub.

``import se_hub`` registers every model with timm (``timm.create_model('se_resnet50')``).
"""
__version__ = '0.1.0'

from . import layers, models
from .hub import push_to_hub
from .layers import SqueezeExcite
from .models import MODELS, SEResNet
from .retrofit import retrofit
from .weights import CheckpointLayoutError, load_checkpoint
from .weights.manifest import manifest
