"""Shared test helpers."""
from typing import Optional

import torch


def randomize_batchnorm(model: torch.nn.Module, calibrate_on: Optional[torch.Tensor] = None,
                        seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm random affine parameters and running statistics.

    timm zero-initialises the last BN of each residual branch: loaded as is, every branch would
    be dead and a wrong layout inside it would go unnoticed. With ``calibrate_on``, the running
    statistics are then set to the batch statistics of that input (as after training), so that
    features stay normalised and input-dependent through 50+ blocks instead of collapsing to a
    constant; a comparison of logits is then a sharp test of the whole network.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if calibrate_on is not None:
            momenta = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()(calibrate_on)
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
    return model.eval()
