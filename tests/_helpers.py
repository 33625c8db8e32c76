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


def gradients_as_state_dict(model: torch.nn.Module) -> dict:
    """``model``'s state dict with every parameter replaced by its gradient (buffers kept as they
    are), so that a checkpoint converter maps gradients to another layout's names exactly as it
    maps the weights (every converter is a renaming / reshaping: linear, so it commutes with the
    gradient)."""
    params = dict(model.named_parameters())
    return {k: (params[k].grad if k in params else v) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Independent cost figures: counted on upstream (timm / torchvision) modules, plus the SE unit by
# the paper's formula. Nothing here calls se_hub.

def conv_linear_macs(model: torch.nn.Module, input_size=(3, 224, 224)) -> int:
    """Multiply-adds of the convolutions and linear layers of one forward at batch 1
    (``torch.utils.flop_counter`` counts 2 FLOPs per multiply-add); works on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops() // 2


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def se_unit_params(channels: int, r: int = 16) -> int:
    """The paper's SE unit: FC C -> C/r (floored, as the Caffe release) and FC C/r -> C, with biases:
    2 C^2 / r weights + C / r + C biases."""
    reduced = max(1, channels // r)
    return 2 * channels * reduced + reduced + channels


def se_unit_macs(channels: int, height: int, width: int, r: int = 16) -> int:
    """The SE unit's multiply-adds as README counts them: the two FCs (2 C^2 / r), one operation
    per element for the squeeze (global average pooling) and one for the scale."""
    return 2 * channels * max(1, channels // r) + 2 * channels * height * width


def output_shapes(model: torch.nn.Module, module_names, input_size) -> list:
    """(C, H, W) of the named submodules' outputs in one forward (meta device is fine)."""
    modules = dict(model.named_modules())
    shapes = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
               for n in module_names]
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size, device=device))
    for h in handles:
        h.remove()
    return [shapes[n] for n in module_names]


def live_head(model: torch.nn.Module) -> torch.nn.Module:
    """SE-VGG: torchvision's N(0, 0.01) fc6 / fc7 / fc8 give near-constant logits at a thin ``mlp_hidden``
    (where a comparison of logits would test nothing): Kaiming-normal instead. Other models as they are."""
    final = getattr(model, 'final', None)
    if hasattr(final, 'fc6'):
        g = torch.Generator().manual_seed(2)
        for m in (final.fc6, final.fc7, model.fc):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
    return model
