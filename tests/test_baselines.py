"""Baselines against the closed forms of docs/baselines.md (coefficients in the order Θ0, Θ1, ..., Θ4)."""
import pytest
import torch

from know.baselines import TSV, LogFit, Naive, TaskVector, tsv_merge
from know.predict import create_predictor


def coefficients(pred, steps=3, s=5):
    """Run `pred` on the identity trajectory: scalar j holds 1 at window position j, 0 elsewhere.

    Because every baseline here is linear, prediction m of scalar j is the weight of position j.
    Returns, per step, the weights reordered to (Θ0, Θ1, ..., Θ(s-1)).
    """
    window = torch.eye(s, dtype=torch.float64)  # (S, s): row = session (oldest first), column = scalar
    return [out.flip(0).tolist() for out in pred.rollout(window, steps, "fc", "w")]


def close(a, b, atol=1e-9):
    return all(abs(x - y) <= atol for x, y in zip(a, b)) and len(a) == len(b)


def test_logfit_sliding_coefficients():
    c = coefficients(LogFit())
    assert close(c[0], [0.8, 0.5, 0.2, -0.1, -0.4])  # (8Θ0 + 5Θ1 + 2Θ2 − Θ3 − 4Θ4)/10
    assert close(c[1], [1.14, 0.60, 0.06, -0.48, -0.32])
    assert close(c[2], [1.512, 0.63, -0.252, -0.434, -0.456])


def test_logfit_fixed_and_variants():
    c = coefficients(LogFit(mode="fixed"))
    assert close(c[0], [0.8, 0.5, 0.2, -0.1, -0.4])
    assert close(c[2], [1.2, 0.7, 0.2, -0.3, -0.8])  # mean(W) + 5b
    # docs/baselines.md rounds (.5367, .4214, .2729, .0635, −.2945) to (.537, .421, .273, .064, −.295)
    assert close(coefficients(create_predictor("logfit_index"), 1)[0], [0.537, 0.421, 0.273, 0.064, -0.295],
                 atol=1e-3)
    assert close(coefficients(create_predictor("quadfit"), 1)[0], [1.8, 0, -0.8, -0.6, 0.6])


def test_logfit_independent_of_rate():
    """The fit against log n_k = log|D0| + k log r equals the fit against k for any r."""
    w = torch.randn(5, 7, dtype=torch.float64)
    for r in (0.5, 1 / 3):
        logn = torch.tensor([4 - i for i in range(5)], dtype=torch.float64) * torch.log(torch.tensor(r))
        a = torch.stack([torch.ones(5, dtype=torch.float64), logn], 1)
        beta = torch.linalg.lstsq(a, w).solution
        want = beta[0] + beta[1] * (-torch.log(torch.tensor(r, dtype=torch.float64)))  # n = |D0| / r
        assert torch.allclose(LogFit().step(w, "fc", "w"), want, atol=1e-12)


def test_taskvector():
    c = coefficients(TaskVector())
    assert close(c[0], [2, -1, 0, 0, 0]) and close(c[2], [4, -3, 0, 0, 0])  # ×8 = Θ0 + 3Δ1
    c = coefficients(TaskVector(lam=2), steps=2)
    assert close(c[1], [7, -6, 0, 0, 0])  # Θ0 + (λ + λ²)Δ1
    assert TaskVector().window == 2


def test_naive():
    w = torch.randn(5, 3)
    assert all(torch.equal(o, w[-1]) for o in Naive().rollout(w, 3, "fc", "w"))


def test_tsv_vector_is_mean_step():
    w = torch.randn(5, 6, dtype=torch.float64)
    want = w[-1] + (w[-1] - w[0]) / 4  # Θ0 + mean(Δ1..Δ4)
    assert torch.allclose(TSV().step(w, "bias", "b"), want, atol=1e-12)
    conv = torch.randn(5, 4, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(TSV(conv_as_matrix=False).step(conv, "conv", "c"), conv[-1] + (conv[-1] - conv[0]) / 4)


def orthogonal_steps(m=8, n=12, seed=0):
    """Θ4..Θ0 whose 4 steps are rank-2 matrices on disjoint row/column blocks (mutually orthogonal tasks)."""
    g = torch.Generator().manual_seed(seed)
    theta = [torch.randn(m, n, generator=g, dtype=torch.float64)]
    for t in range(4):
        d = torch.zeros(m, n, dtype=torch.float64)
        d[2 * t:2 * t + 2, 3 * t:3 * t + 3] = torch.randn(2, 3, generator=g, dtype=torch.float64)
        theta.append(theta[-1] + d)
    return torch.stack(theta)  # oldest first


def test_tsv_merge_orthogonal_tasks_is_sum():
    """With orthogonal rank-⌊R/T⌋ tasks, TSV-M reconstructs the plain sum, so M is the mean step."""
    w = orthogonal_steps()
    deltas = [w[i] - w[i - 1] for i in range(4, 0, -1)]
    assert torch.allclose(tsv_merge(deltas), sum(deltas), atol=1e-10)
    tsv = TSV()
    assert torch.allclose(tsv.step(w, "fc", "w"), w[-1] + (w[-1] - w[0]) / 4, atol=1e-10)
    assert set(tsv.diagnostics["w"][0]) == {"cos_m_delta1", "norm_ratio"}


def test_tsv_conv_reshaped_and_low_rank():
    """Conv kernels are matrices (Cout, Cin·kh·kw): TSV-M keeps rank ≤ T·⌊R/T⌋ of the merged step."""
    w = torch.randn(5, 8, 2, 3, 3, dtype=torch.float64)
    m = TSV().step(w, "conv", "c") - w[-1]
    assert m.shape == (8, 2, 3, 3)
    assert torch.linalg.matrix_rank(m.reshape(8, -1)) <= 8
    plain = TSV(conv_as_matrix=False).step(w, "conv", "c") - w[-1]
    assert not torch.allclose(m, plain)


def test_tsv_last_mode():
    """TSV-C of Δ1 alone: a rank-1 Δ1 of a 10x20 matrix (k = ⌊0.1·10⌋ = 1) is TaskVector exactly."""
    w = torch.randn(5, 10, 20, dtype=torch.float64)
    w[-1] = w[-2] + torch.outer(torch.randn(10, dtype=torch.float64), torch.randn(20, dtype=torch.float64))
    assert torch.allclose(TSV(mode="last").step(w, "fc", "w"), TaskVector().step(w, "fc", "w"), atol=1e-10)
    with pytest.raises(ValueError, match="merge"):
        TSV(mode="nope")


def test_same_interface_by_name():
    for name in ("naive", "taskvector", "logfit", "logfit_index", "quadfit", "tsv"):
        pred = create_predictor(name, known="ignored")
        out = pred.rollout(torch.randn(5, 4, 3), 2, "fc", "w")
        assert len(out) == 2 and out[0].shape == (4, 3)
        assert pred.describe()["method"] == name
