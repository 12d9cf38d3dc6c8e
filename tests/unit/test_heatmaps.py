"""services.heatmaps: one overlay and one caption for every adapter; TensorFlow only when one is drawn."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import numpy as np

from pneumoscan.domain import Label


def test_importing_the_service_loads_no_tensorflow() -> None:
    code = "import sys, pneumoscan.services.heatmaps; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_caption_names_the_model_the_probability_and_that_it_is_not_for_diagnosis() -> None:
    from pneumoscan.services.heatmaps import caption

    text = caption("v9", 0.8765)
    assert text == "MODEL HEATMAP (Grad-CAM), v9: P(pneumonia) 0.88; not for diagnosis"


def test_render_overlay_on_the_model_input_and_on_a_larger_display(tiny_bundle: Any) -> None:
    from PIL import Image

    from pneumoscan.services.heatmaps import heatmap_png, render_overlay

    rng = np.random.default_rng(0)
    size = tiny_bundle.input_size
    model_input = rng.random((size, size), dtype=np.float32)
    small = render_overlay(tiny_bundle, model_input)
    assert small.rgb.shape == (size, size, 3) and small.rgb.dtype == np.uint8
    assert small.probability == float(tiny_bundle.predict(model_input[None])[0])
    assert small.model_version == tiny_bundle.version and tiny_bundle.version in small.caption
    assert small.label == (Label.PNEUMONIA if small.probability >= tiny_bundle.threshold else Label.NORMAL)
    assert render_overlay(tiny_bundle, model_input, threshold=0.0).label == Label.PNEUMONIA
    assert render_overlay(tiny_bundle, model_input, threshold=1.01).label == Label.NORMAL
    display = rng.random((300, 200), dtype=np.float32)
    large = render_overlay(tiny_bundle, model_input, display=display)
    assert large.rgb.shape == (300, 200, 3)
    assert (large.rgb[1:12, :] == 0).mean() > 0.5  # the caption band: black, with white text on it
    assert large.rgb[1:12, :].max() > 200
    picture = Image.open(io.BytesIO(heatmap_png(large)))
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (200, 300)


def test_render_file_decodes_for_the_model_and_scales_the_display_down(settings: Any, tiny_bundle: Any,
                                                                      tmp_path: Any) -> None:
    from support import xrays

    from pneumoscan.services.heatmaps import render_file

    path = tmp_path / "x.png"
    xrays.write_png(xrays.NORMAL_IMAGES[0], path)
    data = path.read_bytes()
    policy = settings.decode_policy
    shown = render_file(tiny_bundle, data, policy, display_side=100)
    assert max(shown.rgb.shape[:2]) == 100
    own = render_file(tiny_bundle, data, policy, display_side=None)
    assert own.rgb.shape == (tiny_bundle.input_size, tiny_bundle.input_size, 3)
    assert own.probability == shown.probability


def test_fit_within_keeps_small_images_and_scales_large_ones() -> None:
    from pneumoscan.services.heatmaps import fit_within

    small = np.zeros((10, 20), np.float32)
    assert fit_within(small, 1024) is small
    assert fit_within(np.zeros((2000, 1000), np.float32), 1024).shape == (1024, 512)
