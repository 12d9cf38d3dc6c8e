"""Averaging weights: only one network's weights can be averaged, and the mean is element-wise."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.models.architectures import build_model
from pneumoscan.models.bundle import BundleError
from pneumoscan.models.ensemble import average_weights


def test_the_mean_of_two_networks_is_element_wise_and_keeps_each_weights_type() -> None:
    import keras

    keras.utils.set_random_seed(1)
    a = build_model("tiny", 32)
    keras.utils.set_random_seed(2)
    b = build_model("tiny", 32)
    mean = average_weights([a, b])
    assert len(mean) == len(a.get_weights())
    for m, wa, wb in zip(mean, a.get_weights(), b.get_weights(), strict=True):
        assert m.dtype == wa.dtype and m.shape == wa.shape
        np.testing.assert_allclose(m, (wa.astype(np.float64) + wb) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(wa, wb) for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True))


@pytest.mark.parametrize(("first", "second"), [
    (("tiny", False), ("pneumonet", False)),  # other layers and shapes
    (("tiny", False), ("tiny", True)),  # one more layer (Equalize, which has no weights of its own)
])
def test_networks_that_differ_in_a_layer_or_a_shape_are_refused(
        first: tuple[str, bool], second: tuple[str, bool]) -> None:
    a, b = (build_model(name, 64, equalize=equalize) for name, equalize in (first, second))
    with pytest.raises(BundleError, match="not the same network"):
        average_weights([a, b])
