"""TensorBoard figures: domains on the axes, the values in the cells, a colour bar."""

from __future__ import annotations

import numpy as np

from brainstacks_pl.figures import forgetting_figure, log_figure, routing_figure, similarity_figure, spectrum_figure

DOMAINS = ["chat", "code", "math"]


def _ticks(ax, axis: str) -> list[str]:
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels]


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_forgetting_figure_labels_every_panel_and_cell_and_has_a_colour_bar():
    matrix = np.array([[1.5, np.nan, np.nan], [1.25, 2.0, np.nan], [1.75, 2.5, 3.0]])
    fig = forgetting_figure({"ungated": matrix, "isolated": matrix + 1, "as_frozen": matrix}, DOMAINS, DOMAINS)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 3 and len(colorbars) == 1 and "validation loss" in colorbars[0].get_ylabel()
    assert [ax.get_title() for ax in panels] == ["ungated", "isolated", "as-frozen"]
    for ax in panels:
        assert _ticks(ax, "x") == DOMAINS and ax.get_xlabel() == "domain evaluated"
    assert _ticks(panels[0], "y") == DOMAINS and panels[0].get_ylabel() == "after training domain"
    assert sorted(_texts(panels[0])) == sorted(
        ["1.500", "1.250", "2.000", "1.750", "2.500", "3.000"]
    )  # NaN cells blank


def test_routing_similarity_and_spectrum_figures_are_labelled(tmp_path):
    report = {
        "domains": DOMAINS,
        "per_source": {
            "chat": {"n": 4, "oracle": {"chat": 0.75, "base": 0.25}, "router": {"chat": 1.0}},
            "math": {"n": 4, "oracle": {"chat+math": 1.0}, "router": {"math": 0.5, "chat+math": 0.5}},
        },
    }
    fig = routing_figure(report)
    oracle, router = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert _ticks(oracle, "y") == ["chat", "math"] and _ticks(router, "x") == DOMAINS
    assert _texts(oracle) == ["75%", "0%", "0%", "100%", "0%", "100%"]
    assert _texts(router) == ["100%", "0%", "0%", "50%", "0%", "100%"]
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)

    sim = similarity_figure(np.eye(2), ["chat", "code"], "math")
    assert _ticks(sim.axes[0], "x") == ["chat", "code"] and _texts(sim.axes[0]) == ["1.00", "0.00", "0.00", "1.00"]
    spec = spectrum_figure({"layers.0.q_proj": [4.0, 2.0, 1.0], "layers.0.v_proj": [1.0]}, "math")
    assert _ticks(spec.axes[0], "y") == ["layers.0.q_proj", "layers.0.v_proj"] and spec.axes[0].get_xlabel().startswith(
        "singular"
    )
    assert len(spec.axes) == 2  # the heatmap and its colour bar

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logger = type("L", (), {"experiment": SummaryWriter(str(tmp_path))})()
    assert log_figure(logger, "router/selection", fig) and not log_figure(object(), "x", fig)
    logger.experiment.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    image = events.Images("router/selection")[0]
    assert image.width > 400 and image.height > 150
