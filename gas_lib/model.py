"""The two trained networks of GAS: a linear feature adaptor and a patch discriminator."""

from __future__ import annotations

import torch
from torch import nn

from .config import GASConfig


class Adaptor(nn.Module):
    """One ``Linear(D, D)``, no activation: moves ImageNet features towards the target domain."""

    def __init__(self, dim: int, init: str = "random") -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        if init == "identity":
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(dim))
                self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class Discriminator(nn.Module):
    """Patch-wise MLP whose sigmoid output is the probability that a patch is anomalous."""

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1, bias=False),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores [N]; the losses use these for numerical stability."""
        return self.body(features).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def build_heads(dim: int, config: GASConfig) -> tuple[Adaptor, Discriminator]:
    return Adaptor(dim, config.adaptor_init), Discriminator(dim, config.disc_hidden)


def build_optimizers(adaptor: Adaptor, discriminator: Discriminator, config: GASConfig
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    def make(kind: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=weight_decay)

    return (make(config.adaptor_optimizer, adaptor.parameters(), config.adaptor_lr,
                 config.adaptor_weight_decay),
            make(config.disc_optimizer, discriminator.parameters(), config.disc_lr,
                 config.disc_weight_decay))
