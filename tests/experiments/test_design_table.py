"""The designs' text table (moved out of the CLI): rows of one metric, primary starred."""

from granularity.experiments.design_report import DESIGN_MODES, format_design_table
from granularity.vocabulary import PROTOCOLS


def test_design_table_rows_and_star():
    ci = {"mean": 0.5, "ci": 0.1, "n": 2}
    d = {"mean": -0.0123, "t_lo": -0.02, "t_hi": -0.004, "p_t": 0.01}
    rows = [{"metric": "hard_error", "primary": True, "cell": "confusable", "transfer": "linear-n10", "target": ci,
             "leaf": ci, "leaf_minus_target": d},
            {"metric": "target_error", "primary": False, "cell": "natural4", "transfer": "map", "target": ci,
             "leaf": ci, "leaf_minus_target": d}]
    lines = format_design_table({"table": rows}, "hard_error").splitlines()
    assert len(lines) == 2 and lines[0].startswith("cell") and "hard_error target" in lines[0]
    assert lines[1].startswith("* confusable") and "-0.0123 [-0.0200, -0.0040]" in lines[1]


def test_every_protocol_names_a_design_mode():
    assert set(DESIGN_MODES) == set(PROTOCOLS) and DESIGN_MODES["probe"] == "linear"
