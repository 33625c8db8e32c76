"""Parameters and multiply-adds as the paper counts them.

The paper's "GFLOPs" are multiply-accumulates at 224x224 of the convolutions and fully connected
layers, plus the SE unit's own elementwise work: one add per input element for the squeeze
(average or max pooling) and one multiply per element for the scale. Convolutions and linear
layers are counted by torch's own ``torch.utils.flop_counter`` (MACs = FLOPs / 2); the SE terms
are added from forward hooks on the SE modules (which run in every block, on every
path). Models are built on the ``meta`` device, so even
SENet-154 costs no memory and no compute.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._compat import create_model
from .layers import SqueezeExcite


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a (1, *input_size) input."""
    device = next(model.parameters()).device
    se_macs = []

    def se_hook(module: SqueezeExcite, args, _output):
        # the SE unit returns its gate; the block scales its input by it (one multiply per element)
        n = args[0].numel()
        se_macs.append(n if module.squeeze == 'none' else 2 * n)  # (squeeze +) scale

    handles = [m.register_forward_hook(se_hook) for m in model.modules() if isinstance(m, SqueezeExcite)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2 + sum(se_macs)


def model_complexity(name: str, input_size: Optional[Tuple[int, int, int]] = None, **kwargs) -> Tuple[int, int]:
    """(parameters, multiply-adds) of a registered model, built on the meta device."""
    with torch.device('meta'):
        model = create_model(name, **kwargs)
    input_size = input_size or model.pretrained_cfg['input_size']
    return count_params(model), count_macs(model, input_size)
