"""The two trained networks of GAS: a linear feature adaptor and a patch discriminator."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import GASConfig


def ring_indicators(grid: tuple[int, int], rings: int = 2) -> torch.Tensor:
    """[h * w, rings] of 0 / 1: whether a grid position lies on the frame's outermost ring of
    patches (column 0), on the next one inside it (column 1), ... (row-major positions)."""
    h, w = (int(v) for v in grid)
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    ring = torch.minimum(torch.minimum(rows, cols), torch.minimum(h - 1 - rows, w - 1 - cols))
    return torch.stack([(ring == r).float() for r in range(rings)], dim=-1).reshape(h * w, rings)


class Adaptor(nn.Module):
    """One ``Linear(D, D)``, no activation: moves ImageNet features towards the target domain.

    With ``grid`` (``position_code > 0``) it is ``Linear(D + 2, D)`` and also reads two inputs
    per patch, whether it lies on the frame's outermost ring or on the next one (``codes``
    [h * w, 2], set to the code's length by ``set_code_length`` once the feature scale is
    measured): a learned offset per ring, so the border's normal patches can sit apart from
    interior patches that resemble them. Rows of ``forward``'s input then come image after image,
    each in grid order, as every caller flattens [B, P, D].
    """

    def __init__(self, dim: int, init: str = "random", grid: tuple[int, int] | None = None
                 ) -> None:
        super().__init__()
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        codes = None if grid is None else torch.zeros(self.grid[0] * self.grid[1], 2)
        self.linear = nn.Linear(dim + (0 if codes is None else codes.shape[1]), dim)
        self.register_buffer("codes", codes)
        if init == "identity":
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.weight[:, :dim].copy_(torch.eye(dim))
                self.linear.bias.zero_()

    def set_code_length(self, length: float) -> None:
        """The ring inputs become ``length`` where true (feature units), 0 elsewhere."""
        assert self.grid is not None, "set_code_length needs an adaptor built with a grid"
        self.codes.copy_(ring_indicators(self.grid, self.codes.shape[1]) * float(length))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.codes is None:
            return self.linear(features)
        positions = self.codes.shape[0]
        if features.shape[0] % positions:
            raise ValueError(f"position_code: {features.shape[0]} patches are not whole images of "
                             f"{positions} grid positions (score images of the fit's input shape)")
        codes = self.codes.to(features.dtype).repeat(features.shape[0] // positions, 1)
        return self.linear(torch.cat([features, codes], dim=-1))


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

    def joint_logits(self, trained: torch.Tensor, fixed: torch.Tensor,
                     trained_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """``logits(cat([trained, fixed]))`` with BatchNorm over both sets, as one batch.

        ``fixed`` gets no input gradient (GAS features are constants of the loss), so the first
        layer runs on each set apart and its backward pass skips the fixed half's input
        gradient (a quarter of that layer's backward products). ``trained_hidden``:
        ``first_layer(trained)`` when the caller already has it (with its graph).
        """
        first, rest = self.body[0], self.body[1:]
        if trained_hidden is None:
            trained_hidden = first(trained)
        hidden = torch.cat([trained_hidden, first(fixed.detach())])
        return rest(hidden).squeeze(-1)

    def first_layer(self, features: torch.Tensor) -> torch.Tensor:
        """The first linear layer's output (before BatchNorm), e.g. as ``context`` below."""
        return self.body[0](features)

    def logits_in_context(self, features: torch.Tensor, context: torch.Tensor | None
                          ) -> torch.Tensor:
        """Logits [N] of ``features`` with BatchNorm over them *and* the ``context`` patches.

        ``context`` is ``first_layer(normal patches)``, computed once. The gradient ascent of
        GAS scores its synthetic patches this way, as the reference scores
        ``cat([normal, synthetic])``: BatchNorm over the synthetic patches alone would
        normalise away any shift they share, hiding the direction back towards normal. In eval
        mode BatchNorm uses its running statistics and the context (may be None) changes nothing.
        """
        if not self.training:
            return self.logits(features)
        if context is None:
            raise ValueError("logits_in_context in training mode needs the normal patches' "
                             "first_layer output as context")
        first, norm, activation, last = self.body
        # BatchNorm needs both halves; the layers after it only the rows that are scored
        hidden = norm(torch.cat([context, first(features)]))[context.shape[0]:]
        return last(activation(hidden)).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))

    @torch.no_grad()
    def folded(self, context: torch.Tensor | None, features: torch.Tensor) -> FoldedDiscriminator:
        """This discriminator with BatchNorm's statistics held fixed and folded into the first
        layer (``ascent_norm="frozen"``).

        Training mode: the statistics of ``cat([context, first_layer(features)])``, the batch the
        reference's first ascent step normalises over (``context``: ``first_layer`` of the normal
        patches); eval mode: the running statistics. The result is an affine map, LeakyReLU and
        the last layer, whose input gradient needs no BatchNorm backward.
        """
        first, norm, activation, last = self.body
        if self.training:
            if context is None:
                raise ValueError("folded in training mode needs the normal patches' "
                                 "first_layer output as context")
            # moments from column sums: torch.var_mean over dim 0 is several times slower
            parts = (context.detach().float(), first(features).float())
            count = sum(part.shape[0] for part in parts)
            mean = sum(part.sum(0) for part in parts) / count
            var = (sum((part * part).sum(0) for part in parts) / count - mean * mean).clamp_min(0)
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = norm.weight.float() * torch.rsqrt(var.float() + norm.eps)  # [hidden]
        return FoldedDiscriminator(
            weight=first.weight.float() * scale[:, None],
            bias=(first.bias.float() - mean.float()) * scale + norm.bias.float(),
            out=last.weight[0].float(), slope=float(activation.negative_slope))


@dataclass
class FoldedDiscriminator:
    """``Discriminator.folded``: an affine map (the first layer and BatchNorm with fixed
    statistics), LeakyReLU and the last layer."""

    weight: torch.Tensor  # [hidden, D]
    bias: torch.Tensor  # [hidden]
    out: torch.Tensor  # [hidden], the last layer
    slope: float  # LeakyReLU's negative slope

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._hidden_and_logits(features)[1]

    def _hidden_and_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.linear(features, self.weight, self.bias)  # [N, hidden]
        return hidden, F.leaky_relu(hidden, self.slope) @ self.out.to(hidden.dtype)

    @torch.no_grad()
    def anomaly_loss_gradient(self, features: torch.Tensor) -> torch.Tensor:
        """The gradient of ``mean(BCE(logits(features), 1))`` with respect to ``features``
        [N, D], float32, written out by hand: two matrix products (in bf16 under the caller's
        autocast) and a few element-wise ones, no autograd graph."""
        hidden, logits = self._hidden_and_logits(features)
        out = self.out.to(hidden.dtype)
        d_logits = (torch.sigmoid(logits.float()) - 1.0) / features.shape[0]  # BCE with target 1
        d_activation = torch.outer(d_logits.to(hidden.dtype), out)  # [N, hidden]
        d_hidden = torch.ops.aten.leaky_relu_backward(d_activation, hidden, self.slope, False)
        return (d_hidden @ self.weight.to(d_hidden.dtype)).float()


class LipschitzDiscriminator(Discriminator):
    """A patch MLP whose logit is ``scale * f(x) + offset`` with ``f`` 1-Lipschitz.

    Both linear layers are spectral-normalised (``torch.nn.utils.parametrizations``) and there
    is no BatchNorm, whose per-unit division would undo the bound. The BatchNorm discriminator
    only ever sees normal patches and synthetic ones within the shell, and far outside it its
    logit can fall (a stronger anomaly scoring lower); this one changes at most ``scale`` per
    unit of feature distance, smoothly in every direction. ``scale`` is a buffer set once the
    feature scale is known (``fit_loop.set_logit_scale``); batch context changes nothing, so the
    ascent and the losses score each patch on its own.
    """

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        nn.Module.__init__(self)
        spectral_norm = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(spectral_norm(nn.Linear(dim, hidden)), nn.LeakyReLU(0.2),
                                  spectral_norm(nn.Linear(hidden, 1, bias=False)))
        self.register_buffer("scale", torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(()))

    def _logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        activation, last = self.body[1], self.body[2]
        return self.scale * last(activation(hidden)).squeeze(-1) + self.offset

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits_from_hidden(self.first_layer(features))

    def joint_logits(self, trained: torch.Tensor, fixed: torch.Tensor,
                     trained_hidden: torch.Tensor | None = None) -> torch.Tensor:
        if trained_hidden is None:
            trained_hidden = self.first_layer(trained)
        return self._logits_from_hidden(torch.cat([trained_hidden,
                                                   self.first_layer(fixed.detach())]))

    def logits_in_context(self, features: torch.Tensor, context: torch.Tensor | None
                          ) -> torch.Tensor:
        return self.logits(features)

    @torch.no_grad()
    def folded(self, context: torch.Tensor | None, features: torch.Tensor) -> FoldedDiscriminator:
        """The same network for ``ascent_norm="frozen"`` (nothing to fold), less ``offset``:
        it scales each patch's loss gradient by a positive factor, which the ascent's per-patch
        normalisation removes."""
        first, activation, last = self.body
        return FoldedDiscriminator(weight=first.weight.float(), bias=first.bias.float(),
                                   out=(self.scale * last.weight[0]).float(),
                                   slope=float(activation.negative_slope))


def build_heads(dim: int, config: GASConfig, grid: tuple[int, int] | None = None
                ) -> tuple[Adaptor, Discriminator]:
    """The adaptor (reading the ring inputs of ``grid`` when ``config.position_code > 0``) and
    the discriminator ``config.disc_lipschitz`` asks for."""
    if config.position_code > 0 and grid is None:
        raise ValueError("config.position_code > 0: build_heads needs the feature grid")
    adaptor = Adaptor(dim, config.adaptor_init,  # first: the random draws of every version
                      grid if config.position_code > 0 else None)
    discriminator = (LipschitzDiscriminator(dim, config.disc_hidden) if config.disc_lipschitz > 0
                     else Discriminator(dim, config.disc_hidden))
    return adaptor, discriminator


def build_optimizers(adaptor: Adaptor, discriminator: Discriminator, config: GASConfig
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    def make(kind: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=weight_decay)

    return (make(config.adaptor_optimizer, adaptor.parameters(), config.adaptor_lr,
                 config.adaptor_weight_decay),
            make(config.disc_optimizer, discriminator.parameters(), config.disc_lr,
                 config.disc_weight_decay))


class WeightAverage:
    """Exponential moving average of some modules' weights and floating buffers.

    ``update()`` after every optimiser step; ``modules`` are frozen copies in eval mode that
    score like the originals (BatchNorm running statistics are averaged alongside). The decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that short fits are
    not dragged back to the random initial weights.
    """

    def __init__(self, live: Sequence[nn.Module], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.live = list(live)
        self.modules = [copy.deepcopy(m).eval().requires_grad_(False) for m in self.live]

    @property
    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - self.current_decay
        for live, average in zip(self.live, self.modules):
            for mine, theirs in zip(average.state_dict().values(), live.state_dict().values()):
                if mine.is_floating_point():
                    mine.lerp_(theirs, weight)
                else:
                    mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "modules": [m.state_dict() for m in self.modules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for module, module_state in zip(self.modules, state["modules"]):
            module.load_state_dict(module_state)
