"""``whynet bench``'s table: one row per ratio with the times beside it, the orientation read
from the key, the default or declared target and whether it is met."""

from __future__ import annotations

import json

from whynet.cli import results_table


def test_the_table_has_work_times_ratio_target_and_met(tmp_path):
    docs = {
        "peer": {"case": {"whynet_s": 2.0, "captum_s": 3.0, "ratio_captum_over_whynet": 1.5}},
        "floor": {"point": {"whynet_s": 2.0, "floor_s": 1.0, "ratio_whynet_over_floor": 2.0}},
        "own": {"point": {"whynet_s": 2.0, "floor_s": 1.0, "ratio_whynet_over_floor": 2.0,
                          "target": 2.5, "max_abs_diff_vs_floor": 0.0}},
        "rows": {"speed": [{"method": "whynet X", "median_s": 4.0, "time_vs_whynet": 1.0},
                           {"method": "captum Y", "median_s": 2.0, "time_vs_whynet": 0.5}]},
    }  # fmt: skip
    for name, doc in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{")
    table = results_table(tmp_path)
    rows = [
        line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    body = {r[0].strip("| "): [c.strip(" |") for c in r[1:]] for r in rows[1:]}
    assert rows[0][0] == "| benchmark" and len(body) == 4  # no row for the accuracy check
    assert body["peer"] == ["case / ratio_captum_over_whynet", "2 s", "3 s", "1.5", ">= 1", "yes"]
    assert body["floor"][1:] == ["2 s", "1 s", "2", "<= 1.5", "no"]
    assert body["own"][4:] == ["<= 2.5", "yes"]  # the benchmark's own target
    # a peer's row in a table of rows: whynet's time = its time / the ratio; not met
    assert body["rows"][1:] == ["4 s", "2 s", "0.5", ">= 1", "no"]
    assert "method=captum Y" in body["rows"][0]
