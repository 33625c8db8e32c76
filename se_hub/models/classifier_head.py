"""The timm head API every se_hub family shares: a global pool and a linear classifier
(``self.global_pool`` and the attribute named by ``classifier_name``), built by timm's
``create_classifier``."""
from typing import Optional, Union

import torch
from torch import nn

from .._compat import create_classifier, get_device_dtype


class ClassifierHeadMixin:
    classifier_name = 'fc'

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return self.classifier_name if name_only else getattr(self, self.classifier_name)

    def _init_head(self, num_features: int, num_classes: int, global_pool: str) -> None:
        """Pooling + classifier over ``num_features`` channels (in the model's constructor)."""
        self.num_features = num_features
        self.classifier_name = self.classifier_name  # on the instance too: TorchScript reads no class attributes
        self.global_pool, classifier = create_classifier(num_features, num_classes, pool_type=global_pool)
        setattr(self, self.classifier_name, classifier)
        self.head_hidden_size = num_features * self.global_pool.feat_mult()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        setattr(self, self.classifier_name, classifier)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        classifier.train(self.training)
