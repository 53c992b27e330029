"""examples/esd_gaussian_toy.py: the ESD paper's Gaussian toy reproduces its claim with exact scores.

With the paper's settings (2-D, 2000 steps, batch 256, seed 0) SDS and VSD collapse q to a point while ESD
with lambda = 1 recovers the target covariance; ESD with lambda = 0 is VSD."""
import pytest
import torch
from repo_scripts import load_repo_script


@pytest.fixture(scope="module")
def toy():
    return load_repo_script("examples/esd_gaussian_toy.py")


@pytest.fixture(scope="module")
def runs(toy):
    """Paper-default runs, each trained once per module on first use."""
    cache = {}

    def get(method, lambda_coeff=1.0):
        key = (method, lambda_coeff)
        if key not in cache:
            cache[key] = toy.run_toy(method, lambda_coeff=lambda_coeff, steps=2000, batch_size=256, seed=0, dim=2)
        return cache[key]

    return get


def test_diffused_gaussian_score_matches_autograd_of_the_log_density(toy):
    gen = torch.Generator().manual_seed(3)
    d, B = 3, 5
    mean, L = torch.randn(d, generator=gen), torch.randn(d, d, generator=gen)
    cov = L @ L.T
    a, s = torch.rand(B, generator=gen) + 0.1, torch.rand(B, generator=gen) + 0.1
    x_t = torch.randn(B, d, generator=gen, requires_grad=True)
    cov_t = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * torch.eye(d)
    log_density = torch.distributions.MultivariateNormal(a[:, None] * mean, covariance_matrix=cov_t).log_prob(x_t)
    (expected,) = torch.autograd.grad(log_density.sum(), x_t)
    got = toy.diffused_gaussian_score(x_t.detach(), mean, cov, a, s)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # A Dirac (zero covariance) at per-row points: the score of N(a x, s^2 I).
    points = torch.randn(B, d, generator=gen)
    dirac = toy.diffused_gaussian_score(x_t.detach(), points, torch.zeros(d, d), a, s)
    torch.testing.assert_close(dirac, (a[:, None] * points - x_t.detach()) / s[:, None] ** 2)


@pytest.mark.parametrize("method", ["sds", "vsd"])
def test_sds_and_vsd_collapse_to_a_point(runs, method):
    metrics = runs(method)["metrics"]
    assert metrics["trace_ratio"] < 0.05, metrics


def test_esd_lambda_one_recovers_the_target_covariance(runs):
    metrics = runs("esd", 1.0)["metrics"]
    assert metrics["rel_frobenius_error"] < 0.05, metrics
    assert 0.95 < metrics["trace_ratio"] < 1.05, metrics


def test_esd_lambda_zero_gives_the_vsd_parameters(runs):
    esd, vsd = runs("esd", 0.0), runs("vsd")
    torch.testing.assert_close(esd["mu"], vsd["mu"], rtol=0, atol=0)
    torch.testing.assert_close(esd["Q"], vsd["Q"], rtol=0, atol=0)


def test_history_snapshots_are_copies_not_aliases_of_the_parameters(toy):
    result = toy.run_toy("esd", lambda_coeff=1.0, steps=30, record_every=10)
    hist = result["history"]
    assert hist["step"].tolist() == [0, 10, 20, 30]
    assert not torch.equal(hist["Q"][0], hist["Q"][-1])
    torch.testing.assert_close(hist["Q"][-1], result["Q"], rtol=0, atol=0)
    torch.testing.assert_close(hist["mu"][-1], result["mu"], rtol=0, atol=0)


def test_command_line_prints_the_fit_and_writes_plots(toy, tmp_path, capsys):
    toy.main(["--method", "esd", "--lambda_coeff", "0.5", "--steps", "40", "--out", str(tmp_path), "--animate"])
    printed = capsys.readouterr().out
    assert "tr(Sigma_q)/tr(Sigma_p)" in printed and "target" in printed
    for name in ("fit.png", "curves.png", "fit.gif"):
        assert (tmp_path / name).stat().st_size > 0
