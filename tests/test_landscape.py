"""Figure 2 and the forgetting curve: PCA plane, BN re-estimation, smoke runs through the debug executor, and
reuse of Table 1's units."""

import pandas as pd
import pytest
import torch

from know.profiles import make_config
from know.drivers import script_main
from know.experiment import Row, transfer_units
from know.jobs import _closure
from know.config import LandscapeCfg
from know.experiment import landscape_unit
from know.landscape import pca_plane, plane_state, project, recalibrate_bn
from know.tables import FIGURE_FORGETTING, FIGURE_LANDSCAPE



def test_pca_plane_of_planar_points():
    g = torch.Generator().manual_seed(0)
    base, u = torch.randn(50, generator=g), torch.linalg.qr(torch.randn(50, 2, generator=g))[0].T  # (2, 50)
    coef = torch.randn(7, 2, generator=g) * torch.tensor([3.0, 1.0])
    x = base + coef @ u  # 7 points on a plane
    mean, axes, ratio = pca_plane(x, list(range(7)))
    coords, off = project(x, mean, axes)
    assert sum(ratio) == pytest.approx(1, abs=1e-5) and ratio[0] > ratio[1]
    assert torch.allclose(axes @ axes.T, torch.eye(2), atol=1e-5)
    assert off.max() < 1e-4
    assert torch.allclose(torch.cdist(coords, coords), torch.cdist(x, x), atol=1e-4)  # an isometry of the plane
    template = {"w": torch.zeros(10, 5), "buf": torch.ones(3)}
    state = plane_state(mean, axes, float(coords[2, 0]), float(coords[2, 1]), template, ["w"])
    assert torch.allclose(state["w"].reshape(-1), x[2], atol=1e-4) and state["buf"] is template["buf"]


def test_recalibrate_bn_matches_the_data():
    from know.models import create_model

    model = create_model("debugnet", num_classes=4, in_chans=1)
    x = torch.randn(40, 1, 8, 8) * 3 + 1
    recalibrate_bn(model, x, batch_size=8)
    feats = model.conv(x)
    assert torch.allclose(model.bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert model.bn.momentum == 0.1 and model.training


def test_landscape_uses_table1_units():
    cfg = make_config("smoke")
    table1 = {u.key for _, t in transfer_units(cfg, [Row("taskvector", steps=(3,)),
                                                     Row("known", known="official", steps=(1, 2, 3))])
              for u in _closure([t])}
    deps = landscape_unit(cfg, LandscapeCfg()).deps
    assert {d.key for d in deps.values()} <= table1 and set(deps) == {"trajectory", "known_official", "taskvector"}


def test_figures_smoke(tmp_path, capsys, known_weights):
    argv = ["--profile", "smoke", "--executor", "debug", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    assert script_main(FIGURE_LANDSCAPE, argv=argv) == 0
    df = pd.read_csv(tmp_path / "results" / "figure_landscape_smoke.csv")
    grid, pts = df[df["kind"] == "grid"], df[df["kind"] == "point"]
    assert len(grid) == 25 and len(pts) == 5 + 3 + 3 and df["acc"].between(0, 1).all()
    assert list(pts["label"][:5]) == ["Θ4", "Θ3", "Θ2", "Θ1", "Θ0"]
    assert grid["a"].min() < pts["a"].min() and grid["b"].max() > pts["b"].max()  # the lattice covers the points
    assert (tmp_path / "figures" / "figure_landscape_smoke.png").is_file()
    capsys.readouterr()
    # the forgetting curve reuses the trajectories and predictions just made
    assert script_main(FIGURE_FORGETTING, argv=argv + ["--landscape.bn=keep"]) == 0
    assert "10 units: 4 cached, 6 to run" in capsys.readouterr().out  # 2 fractions x (pretrain, forget, 2 predict) + 2
    fg = pd.read_csv(tmp_path / "results" / "figure_forgetting_smoke.csv")
    assert sorted(fg["fraction"].unique()) == [0.5, 1.0] and len(fg) == 2 * 11
    traj = fg[(fg["method"] == "trajectory") & (fg["fraction"] == 1.0)].sort_values("step")
    assert list(traj["data_size"]) == [8, 16, 32, 64, 128] and traj["dist_to_theta0"].iloc[-1] == 0  # Θ4 .. Θ0
    pred = fg[fg["method"] == "known_official"]
    assert set(pred[pred["fraction"] == 1.0]["data_size"]) == {256, 512, 1024}
    assert set(pred[pred["fraction"] == 0.5]["data_size"]) == {128, 256, 512}  # half the data: D0 = 64
    assert (tmp_path / "figures" / "figure_forgetting_smoke.png").is_file()
    from know.plots import regenerate

    made = regenerate(tmp_path / "results", tmp_path / "redrawn")
    assert {p.name for p in made} == {"figure_landscape_smoke.png", "figure_forgetting_smoke.png"}
