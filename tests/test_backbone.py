import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from gas_lib import backbone
from gas_lib.backbone import (BackboneUnavailable, FeatureExtractor, efficientnet_lite0_classifier,
                              embed_images)
from gas_lib.config import native_bf16

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _photo(array: np.ndarray) -> torch.Tensor:
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def classifier():
    return efficientnet_lite0_classifier()


def test_packaged_weights_classify_real_photos(classifier):
    with torch.no_grad():
        coffee = classifier(_photo(skdata.coffee()) * 2 - 1).softmax(-1)
        cat = classifier(_photo(skdata.chelsea()) * 2 - 1).softmax(-1)
    assert coffee.argmax().item() == 967  # espresso
    assert coffee.max().item() > 0.5
    assert cat.argmax().item() in CAT_CLASSES


def test_wide_resnet_shapes_without_weights():
    extractor = FeatureExtractor("wide_resnet50_2", pretrained=False)
    images = torch.rand(1, 3, 288, 288)
    maps = extractor.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(1, 512, 36, 36), (1, 1024, 18, 18)]
    assert tuple(extractor(images).shape) == (1, 36 * 36, 1536)
    concat = FeatureExtractor("wide_resnet50_2", embedding="avgpool_concat", pretrained=False)
    assert tuple(concat(images).shape) == (1, 1296, 1536) and concat.feature_dim == 1536
    assert FeatureExtractor.grid_size(288) == (36, 36)
    assert not any(p.requires_grad for p in extractor.parameters())


def test_wide_resnet_offline_error_names_the_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(BackboneUnavailable, match="efficientnet_lite0"):
        FeatureExtractor("wide_resnet50_2", pretrained=True)


def test_efficientnet_features_are_stride_8_and_16():
    extractor = FeatureExtractor("efficientnet_lite0", pretrain_embed_dim=96, target_embed_dim=80)
    images = torch.rand(2, 3, 64, 64)
    maps = extractor.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    features = extractor(images)
    assert tuple(features.shape) == (2, 64, 80) and features.dtype == torch.float32
    # eval mode sticks: BatchNorm must keep its ImageNet statistics
    extractor.train()
    assert not extractor.training
    assert torch.equal(extractor(images), features)


def test_efficientnet_stops_after_the_last_returned_stage():
    """The stride-32 blocks are dropped: fewer blocks, and the maps of a real photo equal
    those of timm's whole feature network with the same weights, bit for bit."""
    import timm

    extractor = FeatureExtractor("efficientnet_lite0")
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                             out_indices=(2, 3))
    full.load_state_dict(backbone._efficientnet_lite0_state_dict(), strict=False)
    full.eval().to(memory_format=torch.channels_last)  # as the extractor runs
    assert len(extractor.maps.net.blocks) == 5 < len(full.blocks) == 7
    photo = _photo(skdata.astronaut())
    with torch.no_grad():
        ours = extractor.feature_maps(photo)
        theirs = full(photo.contiguous(memory_format=torch.channels_last) * 2 - 1)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_feature_cache_in_memory_and_on_disk(tmp_path):
    extractor = FeatureExtractor("efficientnet_lite0", pretrain_embed_dim=32, target_embed_dim=32)
    images = torch.rand(3, 3, 64, 64)
    backbone.clear_feature_cache()
    first = embed_images(extractor, images, torch.device("cpu"), cache_dir=str(tmp_path),
                         progress=False)
    assert len(list(tmp_path.glob("features_*.pt"))) == 1
    backbone.clear_feature_cache()
    again = embed_images(extractor, images, torch.device("cpu"), cache_dir=str(tmp_path),
                         progress=False)
    assert torch.equal(first, again)
    other = embed_images(extractor, images.flip(-1), torch.device("cpu"), cache_dir=str(tmp_path),
                         progress=False)
    assert len(list(tmp_path.glob("features_*.pt"))) == 2
    assert not torch.equal(first, other)


def test_amp_features_follow_the_device_precision_and_cache_apart(tmp_path):
    """Where bf16 is native (CUDA, AVX-512 BF16 CPUs) ``amp`` runs the backbone in bf16: close
    to float32 on a real photo, stored as float32 on the CPU, cached under its own key;
    elsewhere ``amp`` changes nothing."""
    extractor = FeatureExtractor("efficientnet_lite0")
    photo = _photo(skdata.chelsea())
    cpu = torch.device("cpu")
    backbone.clear_feature_cache()
    exact = embed_images(extractor, photo, cpu, amp=False, cache_dir=str(tmp_path),
                         progress=False)
    fast = embed_images(extractor, photo, cpu, amp=True, cache_dir=str(tmp_path), progress=False)
    assert fast.dtype == exact.dtype == torch.float32
    if native_bf16(cpu):
        relative = ((fast - exact).norm(dim=-1) / exact.norm(dim=-1)).mean().item()
        assert 0 < relative < 0.06
        assert len(list(tmp_path.glob("features_*.pt"))) == 2
    else:
        assert torch.equal(fast, exact)


def _reference_order_embedding(maps, pretrain_dim, target_dim):
    """The GLASS reference's order: unfold, upsample the unfolded map, then pool."""
    grid = maps[0].shape[-2:]
    per_layer = []
    for fmap in maps:
        b, c, h, w = fmap.shape
        patches = F.unfold(fmap, kernel_size=3, padding=1).reshape(b, c * 9, h, w)
        if (h, w) != tuple(grid):
            patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        vectors = patches.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
        per_layer.append(F.adaptive_avg_pool1d(vectors, pretrain_dim))
    return F.adaptive_avg_pool1d(torch.cat(per_layer, dim=2), target_dim).squeeze(1)


@pytest.mark.parametrize("dims", [(384, 384), (96, 80)])
def test_embedding_pools_before_upsampling_like_the_reference(dims):
    """Pooling first (cheaper) must give the reference's features up to float rounding, on a
    non-square grid and with real backbone maps."""
    extractor = FeatureExtractor("efficientnet_lite0", pretrain_embed_dim=dims[0],
                                 target_embed_dim=dims[1])
    images = torch.from_numpy(skdata.astronaut()[:192, :320]).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        maps = [m.float() for m in extractor.feature_maps(images.float())]
        expected = _reference_order_embedding(maps, *dims)
        features = extractor(images.float())
    assert tuple(features.shape) == (1, 24 * 40, dims[1])
    scale = expected.abs().max()
    assert scale > 0.1
    assert torch.allclose(features[0], expected, atol=1e-5 * float(scale), rtol=0)


def test_edge_embedding_keeps_the_frame_border_at_the_interior_scale():
    """The reference's zero padding shrinks the outermost patches' features; ``reference_edge``
    repeats the edge, so a uniform map gives the same vector everywhere, and on a real photo
    the border patches keep about the interior's norm while the interior is unchanged."""
    uniform = [torch.ones(1, 4, 6, 8), torch.ones(1, 8, 3, 4)]
    zeros = backbone._reference_embedding(uniform, 24, 16)
    edge = backbone._reference_embedding(uniform, 24, 16, edge="replicate")
    assert torch.allclose(edge, edge[:1].expand_as(edge))
    assert zeros[0].norm() < 0.7 * zeros[6 * 8 // 2 + 3].norm()  # corner vs interior

    images = torch.from_numpy(skdata.astronaut()[:192, :320]).permute(2, 0, 1)[None] / 255.0
    plain = FeatureExtractor("efficientnet_lite0", "reference", 96, 96)(images.float())
    edged = FeatureExtractor("efficientnet_lite0", "reference_edge", 96, 96)(images.float())
    grid = plain[0].norm(dim=-1).view(24, 40), edged[0].norm(dim=-1).view(24, 40)
    ring = torch.ones(24, 40, dtype=torch.bool)
    ring[3:-3, 3:-3] = False  # the stride-16 edge reaches three stride-8 cells in (bilinear)
    interior = (~ring).nonzero(as_tuple=True)
    assert torch.allclose(grid[0][interior], grid[1][interior], rtol=1e-5)
    outer = torch.zeros(24, 40, dtype=torch.bool)
    outer[0], outer[-1], outer[:, 0], outer[:, -1] = True, True, True, True
    ratio_plain = grid[0][outer].mean() / grid[0][interior].mean()
    ratio_edge = grid[1][outer].mean() / grid[1][interior].mean()
    assert ratio_plain < 0.85 < ratio_edge


def test_frame_pad_mirrors_the_frame_and_keeps_the_grid(tmp_path):
    """``frame_pad`` changes what the backbone sees at the frame's edge: the same grid, the
    outermost patches moved far more than the centre's, and its own cache entry."""
    images = torch.from_numpy(skdata.astronaut()[:192, :320]).permute(2, 0, 1)[None] / 255.0
    plain = FeatureExtractor("efficientnet_lite0", "reference", 96, 96)
    padded = FeatureExtractor("efficientnet_lite0", "reference", 96, 96, frame_pad=16)
    a, b = plain(images.float())[0].view(24, 40, 96), padded(images.float())[0].view(24, 40, 96)
    change = ((a - b).norm(dim=-1) / a.norm(dim=-1)).view(24, 40)
    ring = torch.zeros(24, 40, dtype=torch.bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    assert change[ring].mean() > 3 * change[8:-8, 12:-12].mean()
    assert backbone.feature_cache_key(plain, images) != backbone.feature_cache_key(padded, images)
