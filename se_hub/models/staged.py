"""The timm feature API for plain stage-by-stage networks (stem -> stages -> final -> head),
shared by the mobile, VGG and Shake-Shake families.

A subclass builds ``_stem(x)``, the stem pooling ``stem_pool`` (an identity when there is none),
an ``nn.Sequential`` of stages under the attribute named by ``stages_attr``, ``final`` (what
follows the last stage before the head: an identity, a ReLU, VGG's fc6/fc7) and
``feature_info``. With ``stem_feature = True`` feature level 0 is the stem output (before
``stem_pool``); the other levels are the stage outputs, in order.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.models import checkpoint_seq
from torch import nn

from .._compat import feature_take_indices
from .classifier_head import ClassifierHeadMixin


class StagedNet(ClassifierHeadMixin, nn.Module):
    stages_attr = 'stages'
    stem_feature = False
    final_changes_width = False  # True when ``final`` maps the last stage's width to another (VGG's MLP)

    def _init_net(self, num_classes: int, in_chans: int, drop_rate: float) -> None:
        """The attributes timm's model API reads on every model (in each family's constructor)."""
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _stages(self) -> nn.Sequential:
        return getattr(self, self.stages_attr)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Taps at ``feature_info``'s levels; the final output is ``forward_features``'s."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' is supported")
        offset = 1 if self.stem_feature else 0
        num_levels = len(self.feature_info)
        take_indices, max_index = feature_take_indices(num_levels, indices)
        intermediates = []
        x = self._stem(x)
        if offset and 0 in take_indices:
            intermediates.append(x)
        x = self.stem_pool(x)
        stages = self._stages()
        if stop_early and not torch.jit.is_scripting():
            stages = stages[:max_index + 1 - offset]
        ran_all = True
        for idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if idx + offset in take_indices:
                intermediates.append(x)
        if stop_early and max_index < num_levels - 1:
            ran_all = False
        if intermediates_only:
            return intermediates
        if ran_all:
            x = self.final(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        offset = 1 if self.stem_feature else 0
        num_levels = len(self.feature_info)
        take_indices, max_index = feature_take_indices(num_levels, indices)
        setattr(self, self.stages_attr, self._stages()[:max_index + 1 - offset])
        if max_index + 1 - offset == 0:
            self.stem_pool = nn.Identity()
        prune_end = max_index < num_levels - 1
        width_changed = prune_end or (prune_norm and self.final_changes_width)
        if prune_end or prune_norm:  # `final` belongs to the last stage
            self.final = nn.Identity()
        if width_changed:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or width_changed:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self._stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self._stages(), x, flatten=True)
        else:
            x = self._stages()(x)
        return self.final(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else getattr(self, self.classifier_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
