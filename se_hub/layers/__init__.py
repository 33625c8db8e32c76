from .factory import ATTENTION_LAYERS, SeLayer, resolve_se_layer
from .recomputed_scale import KEEPS_ITS_INPUT, plain_se_backward, recomputed_scales, scale, scaled_residual
from .se_block import GATE_TYPES, SQUEEZE_TYPES, AttentionSlot, ExcitationConv, SqueezeExcite, reduced_channels
from .se_tail import batch_norm_saved_stats, scale_add
