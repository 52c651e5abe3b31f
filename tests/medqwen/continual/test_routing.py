"""Routing analysis (medqwen.continual.routing): Jensen-Shannon against scipy, the summary on
hand-built shares, bad input, the expert axis label and the plot."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from medqwen.continual.routing import (
    expert_axis_label, js_divergence, plot_routing, routing_summary, share_array,
)


def test_js_divergence_matches_scipy_and_its_bounds():
    rng = np.random.default_rng(0)
    p, q = rng.random((5, 8)), rng.random((5, 8))
    # scipy returns the Jensen-Shannon *distance*, the square root of the divergence
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(js_divergence(p, q), expected, rtol=1e-10)
    np.testing.assert_allclose(js_divergence(p[0], p[0]), 0.0, atol=1e-12)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_routing_summary_by_hand():
    # two layers, two experts; task a always the same, task b the mirror image on layer 2
    routing = {
        "a": {"l1": [0.5, 0.5], "l2": [1.0, 0.0]},
        "b": {"l1": [0.5, 0.5], "l2": [0.0, 1.0]},
    }
    summary = routing_summary(routing, ["a", "b"])
    assert summary["layers"] == 2 and summary["experts"] == 2
    assert summary["mean_share"] == {"a": [0.75, 0.25], "b": [0.25, 0.75]}
    assert summary["top_expert"] == {"a": 0, "b": 1}
    # layer 1 identical (0), layer 2 disjoint (1): mean 0.5
    assert summary["js_between_tasks"] == {"a|b": pytest.approx(0.5)}
    assert summary["js_between_tasks_mean"] == pytest.approx(0.5)
    # from uniform: layer 1 is uniform (0), layer 2 one-hot
    one_hot = jensenshannon([1.0, 0.0], [0.5, 0.5], base=2) ** 2
    assert summary["js_from_uniform"]["a"] == pytest.approx(one_hot / 2)


def test_share_array_names_the_bad_task():
    with pytest.raises(ValueError, match=r"\['c'\]"):
        share_array({"a": {"l1": [1.0, 0.0]}}, ["a", "c"])
    with pytest.raises(ValueError, match="different layers"):
        share_array({"a": {"l1": [1.0, 0.0]}, "b": {"l2": [1.0, 0.0]}}, ["a", "b"])


def test_expert_axis_label_says_what_an_expert_is():
    assert expert_axis_label({"kind": "sslora", "init": "spectral"}) == "expert (spectral segment)"
    assert expert_axis_label({"kind": "sslora"}) == "expert (spectral segment)"  # SSLoRA's default init
    assert expert_axis_label({"init": "principal"}) == "expert (principal init)"
    assert expert_axis_label({"init": "zero"}) == "expert (zero init)"


def test_plot_routing_writes_a_png(tmp_path):
    routing = {t: {f"l{i}": [0.25, 0.25, 0.5, 0.0] for i in range(3)} for t in ("a", "b")}
    path = plot_routing(routing, ["a", "b"], tmp_path / "routing.png", title="t", expert_label="expert (zero init)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
