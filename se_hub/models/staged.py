"""The one trunk of every se_hub family: timm's feature API (``forward_intermediates``,
``prune_intermediate_layers``, ``forward_features``, ``forward_head``) written once over a plan given
as data, so each family keeps its own module names (and checkpoint keys).

A family's constructor registers its modules in forward order, then calls ``_init_trunk`` with
``stem`` (top-level children run first), ``stages`` (module paths: ``layer1``, or ``blocks.3`` inside a
container) and ``final`` (top-level children after the last stage: a final norm, a head conv, VGG's
fc6 / fc7). Feature level ``i`` (``feature_info[i]``) is tapped after the step ``taps[i]`` (by default
its ``module``): a stem step, or the last stage of a stride for MBConv's per-stride levels.
"""
from contextlib import contextmanager, nullcontext
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.models import checkpoint, checkpoint_seq
from torch import nn

from .._compat import feature_take_indices
from ..layers.recomputed_scale import recomputed_scales
from .classifier_head import ClassifierHeadMixin


@contextmanager
def build_on(model: nn.Module, device=None, dtype=None) -> Iterator[None]:
    """A constructor's body: modules built on ``device`` (timm passes device= / dtype=; a meta build
    costs nothing), then cast to ``dtype``."""
    with torch.device(device) if device is not None else nullcontext():
        yield
    if dtype is not None:
        model.to(dtype=dtype)


@torch.jit.ignore
def init_conv_weights(model: nn.Module, zero_bias: bool = False) -> None:
    """Kaiming-normal (fan-out, ReLU) convolution weights; with ``zero_bias`` their biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)


class StagedNet(ClassifierHeadMixin, nn.Module):
    """Base of every se_hub model class: the trunk plan of ``_init_trunk`` and timm's feature API over it."""
    trunk_names: List[str]  # top-level children forward_features runs, in order
    # True where ``final`` is a norm of the last stage (forward_intermediates(norm=True) applies it to
    # the last level), False where it is more layers (its output is only forward_features')
    final_is_norm = False
    # True where ``final`` is part of the head (MBConv's head conv): prune_head removes it too
    final_in_head = False

    def _init_net(self, num_classes: int, in_chans: int, drop_rate: float) -> None:
        """The attributes timm's model API reads on every model (in each family's constructor)."""
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    def _init_trunk(self, stem: Sequence[str], stages: Sequence[str], final: Sequence[str] = (),
                    taps: Optional[Sequence[str]] = None) -> None:
        self.stem_steps = list(stem)
        self.stage_steps = list(stages)
        self.final_steps = list(final)
        self.tap_steps = list(taps) if taps is not None else [f['module'] for f in self.feature_info]
        steps = self.stem_steps + self.stage_steps
        missing = [t for t in self.tap_steps if t not in steps]
        if missing or len(self.tap_steps) != len(self.feature_info):
            raise ValueError(f'feature taps {self.tap_steps} must name one stem or stage step per feature level')
        self.trunk_names = list(dict.fromkeys(s.split('.')[0] for s in steps + self.final_steps))
        # forward_features runs the children in registration order, forward_intermediates these lists
        children = [n for n, _ in self.named_children() if n in self.trunk_names]
        if children != self.trunk_names:
            raise ValueError(f'trunk {self.trunk_names} is not in the order its modules were registered: {children}')

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.grad_checkpointing:
            return stage(x)
        return checkpoint_seq(stage, x) if isinstance(stage, nn.Sequential) else checkpoint(stage, x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The outputs at ``feature_info``'s levels; the final output is ``forward_features``' (unless
        ``stop_early`` stopped before the last level)."""
        with self._lean_scales(x):
            return self._intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)

    def _intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]],
            norm: bool,
            stop_early: bool,
            output_fmt: str,
            intermediates_only: bool,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' is supported")
        num_levels = len(self.feature_info)
        take_indices, max_index = feature_take_indices(num_levels, indices)
        taps = {self.tap_steps[i] for i in take_indices}
        last_tap = self.tap_steps[-1] if norm and self.final_is_norm and num_levels - 1 in take_indices else None
        steps = self.stem_steps + self.stage_steps
        stopped = stop_early and max_index < num_levels - 1
        if stopped:  # the whole stem runs (as timm's ResNet does: the max-pool after a stem tap too)
            steps = steps[:max(steps.index(self.tap_steps[max_index]) + 1, len(self.stem_steps))]
        intermediates = []
        for step in steps:
            module = self.get_submodule(step)
            x = self._run_stage(module, x) if step in self.stage_steps else module(x)
            if step in taps:
                intermediates.append(self._final(x) if step == last_tap else x)
        if intermediates_only:
            return intermediates
        if not stopped:
            x = self._final(x)
        return x, intermediates

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.final_steps:
            x = self.get_submodule(step)(x)
        return x

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drops the steps after level ``max(indices)``'s tap; ``final`` too when it goes with them,
        with the norm (``prune_norm``) or, where it is part of the head, with the head."""
        num_levels = len(self.feature_info)
        take_indices, max_index = feature_take_indices(num_levels, indices)
        steps = self.stem_steps + self.stage_steps
        keep = steps.index(self.tap_steps[max_index]) + 1
        prune_end = max_index < num_levels - 1
        drop_final = prune_end or prune_norm or (prune_head and self.final_in_head)
        dropped = steps[keep:] + (self.final_steps if drop_final else [])
        for step in dropped:
            container, _, index = step.rpartition('.')
            if container:  # a stage inside a container: keep the container's stages before it
                setattr(self, container, getattr(self, container)[:int(index)])
            else:
                setattr(self, step, nn.Identity())
        self.stem_steps = [s for s in self.stem_steps if s not in dropped]
        self.stage_steps = [s for s in self.stage_steps if s not in dropped]
        self.final_steps = [s for s in self.final_steps if s not in dropped]
        width = self.feature_info[max_index]['num_chs']
        width_changed = prune_end or (drop_final and width != self.num_features)
        if width_changed:
            self.num_features = self.head_hidden_size = width
        if prune_head or width_changed:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and (self.training or self.grad_checkpointing):
            return self._unscripted_features(x)
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # children in registration order (TorchScript runs a loop over them, not over paths)
        for name, module in self.named_children():
            if name in self.trunk_names:
                x = module(x)
        return x

    @torch.jit.unused
    def _unscripted_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._lean_scales(x):
            if not self.grad_checkpointing:
                return self._features(x)
            for step in self.stem_steps + self.stage_steps:
                module = self.get_submodule(step)
                x = self._run_stage(module, x) if step in self.stage_steps else module(x)
            return self._final(x)

    @torch.jit.unused
    def _lean_scales(self, x: torch.Tensor):
        """In training, SE products that a later layer saves are kept as their factors
        (``layers/recomputed_scale.py``): the memory of the SE-free network."""
        if torch.compiler.is_compiling() or not self.training or not isinstance(x, torch.Tensor):
            return nullcontext()
        recomputing = self.__dict__.get('_recomputing_blocks')
        if recomputing is None:
            # whether any block needs the context: a scan of every module, 1 ms a forward in a network of
            # 800 modules (ResNet-164), so kept until the next train() call, which sees blocks swapped since
            recomputing = any(m.__dict__.get('recomputes_products', False) for m in self.modules())
            self.__dict__['_recomputing_blocks'] = recomputing
        return recomputed_scales() if recomputing else nullcontext()

    def train(self, mode: bool = True):
        self.__dict__.pop('_recomputing_blocks', None)
        return super().train(mode)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        if pre_logits:
            return x
        for name, module in self.named_children():  # the classifier by name, in a form TorchScript compiles
            if name == self.classifier_name:
                x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def stage_paths(container: str, count: int) -> List[str]:
    """``['blocks.0', 'blocks.1', ...]``: the stages of an ``nn.Sequential`` of stages."""
    return [f'{container}.{i}' for i in range(count)]

