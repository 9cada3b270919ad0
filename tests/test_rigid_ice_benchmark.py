"""`benchmarks/rigid_ice.py --smoke`: the whole ice pipeline (MD, MBAR ladder, symmetry-augmented
training with a parameter average, estimates) runs and writes a complete, finite summary."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "rigid_ice.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("rigid_ice_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_a_complete_summary_and_reuses_its_flow(tmp_path, capsys):
    benchmark = load_benchmark()
    threads = torch.get_num_threads()
    try:
        assert benchmark.main(["--smoke", "--work-dir", str(tmp_path), "--md-workers", "1"]) == 0
        first = capsys.readouterr().out
        summary = json.loads((tmp_path / "rigid_ice.json").read_text())
        assert "space group: 8 operations" in first and "training:" in first
        for key in ("ess", "ess_last_parameters", "ess_train_frames", "ess_group_averaged", "df_lfep_kT",
                    "df_lfep_group_averaged_kT", "df_bar_kT", "df_mbar_kT"):
            assert math.isfinite(summary[key]), key
        assert 0.0 < summary["ess"] <= 1.0 and 0.0 < summary["ess_last_parameters"] <= 1.0
        assert 0.0 < summary["ess_group_averaged"] <= 1.0 and summary["n_group_operations"] == 8
        assert summary["settings"]["augment"] == "symmetry" and summary["settings"]["ema_decay"] == 0.9
        flows = list(tmp_path.glob("flow_*.pt"))
        assert len(flows) == 1
        stored = torch.load(flows[0], weights_only=False)
        assert stored["params"]["augment"] == {"kind": "symmetry", "operations": 8}
        assert stored["last_state_dict"] is not None
        assert {p.dtype for p in stored["state_dict"].values() if p.is_floating_point()} >= {torch.float32}
        # a second run reuses the MD and the flow, and gives the same estimates
        assert benchmark.main(["--smoke", "--work-dir", str(tmp_path), "--md-workers", "1"]) == 0
        assert "flow: reused" in capsys.readouterr().out
        again = json.loads((tmp_path / "rigid_ice.json").read_text())
        assert again["ess"] == pytest.approx(summary["ess"], rel=1e-9)
        # another flow seed trains a second flow on the same MD frames
        assert benchmark.main(["--smoke", "--work-dir", str(tmp_path), "--md-workers", "1", "--flow-seed", "1"]) == 0
        assert len(list(tmp_path.glob("flow_*.pt"))) == 2 and "partly cached" in capsys.readouterr().out
        # the two flows as an ensemble (x 8 operations): no training, one more row
        assert benchmark.main(["--smoke", "--work-dir", str(tmp_path), "--md-workers", "1", "--flow-seed", "1",
                               "--ensemble-flow-seeds", "0"]) == 0
        assert "ESS, 2 flows x 8 operations" in capsys.readouterr().out
        mixture = json.loads((tmp_path / "rigid_ice.json").read_text())["ensemble"]
        assert mixture["flow_seeds"] == [1, 0] and mixture["n_components"] == 16 and 0.0 < mixture["ess"] <= 1.0
        with pytest.raises(SystemExit, match="--flow-seed 7 first"):
            benchmark.main(["--smoke", "--work-dir", str(tmp_path), "--md-workers", "1", "--ensemble-flow-seeds", "7"])
    finally:
        torch.set_num_threads(threads)
