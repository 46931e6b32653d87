"""The metrics figure: collapsed models crossed out, never drawn as ordinary points."""

from prunexplain.evaluate.plot import metrics_figure


def _rows() -> list[dict]:
    values = {("dense", 1.0): 0.5, ("magnitude", 2.0): 0.45, ("magnitude", 8.0): 0.9, ("random", 8.0): 0.2}
    return [{"metric": metric, "method": method, "rate": rate, "mean": value, "ci_low": value - 0.1,
             "ci_high": value + 0.1} for metric in ("insertion_auc", "energy_pointing_game")
            for (method, rate), value in values.items()]


def _crosses(figure) -> list[list[float]]:
    return [list(line.get_xdata()) for axis in figure.axes for line in axis.lines if line.get_marker() == "x"]


def test_a_collapsed_rate_is_crossed_out_in_every_panel_of_its_method_only():
    figure = metrics_figure(_rows(), {}, {"magnitude": [8.0], "random": []})
    assert _crosses(figure) == [[8.0], [8.0]]  # one per metric panel, magnitude's 8x; random's 8x stays
    assert "x: collapsed" in figure.get_suptitle()


def test_without_collapsed_models_nothing_is_crossed_out():
    figure = metrics_figure(_rows(), {"magnitude": [(1.0, 0.9), (8.0, 0.1)]})
    assert _crosses(figure) == [] and figure.get_suptitle() == ""
