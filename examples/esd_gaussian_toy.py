"""The 2-D Gaussian toy of ESD (Wang et al., "Taming Mode Collapse in Score Distillation for Text-to-3D
Generation", CVPR 2024): score distillation with exact scores, where SDS and VSD collapse to a point and
ESD recovers the target's covariance.

A Gaussian q = N(mu_q, Q Q^T), sampled as x = mu_q + Q c with c ~ N(0, I), is fitted to a target
p = N(mu_p, S S^T) (S = U[0,1)^{d x d} + I). Diffused Gaussians stay Gaussian, so every score is exact:

    x_t = a x + s eps,   grad log N_t(x_t) = -(a^2 Sigma + s^2 I)^{-1} (x_t - a mu)

and the parameters follow ESD's distillation gradient on x_t (lambda = 1 - guidance_scale_lora in threestudio):

    grad = -w(t) (score_p - lambda score_q_uncond - (1 - lambda) score_q_cond)

- sds:  score_p against the injected noise: grad = -w (score_p - eps), as in the paper's toy. The
        properly scaled noise term would be -eps/s, which is exactly VSD's particle score below, so here
        SDS differs from VSD only by a zero-mean term: the same expected update, with about 6x the
        per-batch spread near the optimum (VSD's particle score is a control variate).
- vsd:  the "particle" model q_t(. | c) is a Dirac at x.detach(), diffused: N(a x, s^2 I).
- esd:  adds the camera-free model: the analytic score of the whole current q_t. lambda = 0 is VSD,
        lambda = 1 drops the particle score and minimises KL(q || p), entropy included.

Settings follow the paper's toy (VITA-Group/3D-Mode-Collapse, gaussian_example.py): seed 0, 2000 steps,
batch 256, AdamW (lr 1e-2, no weight decay), 100 warm-up steps then a cosine decay over 1.5x the steps,
q_mu initialised mu_p + 10 U[0,1)^d, Q ~ U[0,1)^{d x d}. Random numbers are drawn in the original's
order from one generator, so runs compare with the numbers measured from the original script.

Usage:
    python examples/esd_gaussian_toy.py --method esd --lambda_coeff 1.0 --out outputs/esd-toy
    python examples/esd_gaussian_toy.py --method vsd --animate      # also writes fit.gif
"""
import argparse
import math
import os
import time

import numpy as np
import torch

BETA_START, BETA_END = 1e-4, 0.02
METHODS = ("sds", "vsd", "esd")


def noise_levels(batch_size, generator):
    """The toy's noise schedule, one level per batch row: beta_i ~ U[1e-4, 0.02), abar_i = prod_{j<=i} (1 - beta_j)
    (a cumulative product along the batch, so row i sits at step i+1 of a random DDPM chain), and the
    perturbation x_t = a x + s eps with a = abar, s = sqrt((1 - abar) / abar), weight w = (1 - abar) s.
    Kept from the original rather than the VP pair (sqrt(abar), sqrt(1 - abar)): the scores are exact for any
    (a, s), and the numbers stay comparable with the paper's."""
    beta = torch.rand(batch_size, generator=generator) * (BETA_END - BETA_START) + BETA_START
    a = torch.cumprod(1.0 - beta, dim=0)
    s = ((1.0 - a) / a).sqrt()
    return a, s, (1.0 - a) * s


def diffused_gaussian_score(x_t, mean, cov, a, s):
    """grad_x log N(x_t; a mean, a^2 cov + s^2 I) per row. x_t: [B, d]; mean: [d] or [B, d]; cov: [d, d] (PSD,
    zeros for a Dirac); a, s: [B]. One eigendecomposition cov = U diag(lam) U^T serves the whole batch:
    (a^2 cov + s^2 I)^{-1} = U diag(1 / (a^2 lam + s^2)) U^T, instead of B matrix inverses."""
    lam, U = torch.linalg.eigh(cov)
    lam = lam.clamp_min(0.0)
    diff = (x_t - a[:, None] * mean) @ U
    return -(diff / (a[:, None] ** 2 * lam + s[:, None] ** 2)) @ U.T


def distillation_gradient(method, lambda_coeff, x_t, x, eps, a, s, w, target_mu, target_cov, mu_q, cov_q):
    """The update on x_t for one batch (ESD's rule above); all inputs are detached."""
    score_p = diffused_gaussian_score(x_t, target_mu, target_cov, a, s)
    if method == "sds":
        return -w[:, None] * (score_p - eps)
    dirac = torch.zeros_like(cov_q)
    score_q_cond = diffused_gaussian_score(x_t, x, dirac, a, s)
    if method == "vsd":
        return -w[:, None] * (score_p - score_q_cond)
    # Computed for every lambda, 0 included, so ESD(lambda=0) == VSD checks the formula, not a shortcut.
    score_q_uncond = diffused_gaussian_score(x_t, mu_q, cov_q, a, s)
    return -w[:, None] * (score_p - lambda_coeff * score_q_uncond - (1.0 - lambda_coeff) * score_q_cond)


def cosine_with_warmup(warmup_steps, total_steps):
    """LR factor: linear warm-up from 0, then half a cosine period over total_steps (the toy's scheduler)."""

    def factor(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def gaussian_metrics(mu_q, cov_q, mu_p, cov_p):
    """Fit metrics, batched over leading dims of mu_q [..., d] / cov_q [..., d, d]. Covariances are compared,
    not Q, which is identified only up to a rotation. kl = KL(q || p) (inf once q collapses),
    cross_entropy = -E_q log p, the part SDS and VSD minimise."""
    d = mu_p.shape[-1]
    trace = lambda m: m.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    prec_p = torch.linalg.inv(cov_p)
    delta = mu_q - mu_p
    maha = (delta @ prec_p * delta).sum(-1)
    logdet_p = torch.linalg.slogdet(cov_p).logabsdet
    cross_entropy = 0.5 * (trace(prec_p @ cov_q) + maha + logdet_p + d * math.log(2 * math.pi))
    sign, logdet_q = torch.linalg.slogdet(cov_q)
    logdet_q = torch.where(sign > 0, logdet_q, torch.full_like(logdet_q, -math.inf))
    return {
        "trace_ratio": trace(cov_q) / trace(cov_p),
        "rel_frobenius_error": torch.linalg.matrix_norm(cov_q - cov_p) / torch.linalg.matrix_norm(cov_p),
        "mean_error": delta.norm(dim=-1),
        "kl": 0.5 * (trace(prec_p @ cov_q) + maha - d + logdet_p - logdet_q),
        "cross_entropy": cross_entropy,
    }


def run_toy(
    method,
    lambda_coeff=1.0,
    steps=2000,
    batch_size=256,
    lr=1e-2,
    seed=0,
    dim=2,
    init_distance=10.0,
    warmup_steps=100,
    record_every=10,
):
    """Fit q to p with `method` ("sds" | "vsd" | "esd"); lambda_coeff is used by "esd" only.

    Runs on one CPU thread (restored afterwards): the tensors are tiny, and intra-op threads only add
    synchronisation (about 10x slower on a busy 2-core machine).

    Returns a dict of float32 CPU tensors: mu, cov (= Q Q^T), Q, target_mu, target_cov; metrics (floats:
    trace_ratio, rel_frobenius_error, mean_error, kl, cross_entropy); history (step [K], mu [K, d], cov [K, d, d],
    every `record_every` steps and the last); vis_noise [2, batch_size, d] (fixed c for plotting p and q
    samples); seconds (training wall time)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    target_mu = torch.rand(dim, generator=gen)
    target_S = torch.rand(dim, dim, generator=gen) + torch.eye(dim)
    target_cov = target_S @ target_S.T
    mu_q = torch.nn.Parameter(torch.rand(dim, generator=gen) * init_distance + target_mu)
    Q = torch.nn.Parameter(torch.rand(dim, dim, generator=gen))
    vis_noise = torch.randn(2, batch_size, dim, generator=gen)  # drawn here, as in the original's stream

    optimizer = torch.optim.AdamW([mu_q, Q], lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup_steps, int(1.5 * steps)))

    recorded = sorted(set(range(0, steps, record_every)) | {steps})
    hist_mu = torch.empty(len(recorded), dim)
    hist_Q = torch.empty(len(recorded), dim, dim)
    k = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        for step in range(steps + 1):
            if step == recorded[k]:
                # copy_ makes copies: snapshots must not alias the parameters updated in place.
                hist_mu[k].copy_(mu_q.detach())
                hist_Q[k].copy_(Q.detach())
                k += 1
            if step == steps:
                break
            a, s, w = noise_levels(batch_size, gen)
            c = torch.randn(batch_size, dim, generator=gen)
            x = mu_q + c @ Q.T
            eps = torch.randn(batch_size, dim, generator=gen)
            x_t = a[:, None] * x + s[:, None] * eps
            with torch.no_grad():
                cov_q = Q.detach() @ Q.detach().T
                grad = distillation_gradient(
                    method, lambda_coeff, x_t, x.detach(), eps, a, s, w, target_mu, target_cov, mu_q.detach(), cov_q
                )
            optimizer.zero_grad(set_to_none=True)
            # The toy's surrogate 0.5 ||x_t - (x_t - grad).detach()||^2 / B has d/dx_t = grad / B; backprop it directly.
            x_t.backward(grad / batch_size)
            optimizer.step()
            scheduler.step()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start

    mu = mu_q.detach().clone()
    Q_final = Q.detach().clone()
    cov = Q_final @ Q_final.T
    metrics = {key: float(v) for key, v in gaussian_metrics(mu, cov, target_mu, target_cov).items()}
    return {
        "method": method,
        "lambda_coeff": lambda_coeff,
        "mu": mu,
        "cov": cov,
        "Q": Q_final,
        "target_mu": target_mu,
        "target_cov": target_cov,
        "target_S": target_S,
        "metrics": metrics,
        "history": {
            "step": torch.tensor(recorded),
            "mu": hist_mu,
            "cov": hist_Q @ hist_Q.transpose(-1, -2),
            "Q": hist_Q,
        },
        "vis_noise": vis_noise,
        "seconds": seconds,
    }


def title_of(result, tex=True):
    if result["method"] != "esd":
        return result["method"].upper()
    return f"ESD ($\\lambda={result['lambda_coeff']:g}$)" if tex else f"ESD (lambda={result['lambda_coeff']:g})"


def _ellipse(mu, cov, radius, n=200):
    """Points of {mu + radius cov^{1/2} u : |u| = 1} in the first two coordinates (numpy in, numpy out)."""
    lam, U = np.linalg.eigh(cov[:2, :2])
    theta = np.linspace(0.0, 2.0 * math.pi, n)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return mu[:2] + radius * (circle * np.sqrt(lam.clip(min=0.0))) @ U.T


def _limits(mus, covs, target_mu, target_cov, n_sigma=3.0):
    """Square axis limits covering the n-sigma box of the target and of every given (mu, cov)."""
    centres = np.concatenate([mus[:, :2], target_mu[None, :2]])
    variances = np.concatenate([covs, target_cov[None]]).diagonal(axis1=-2, axis2=-1)[:, :2]
    lo = (centres - n_sigma * np.sqrt(variances)).min(0)
    hi = (centres + n_sigma * np.sqrt(variances)).max(0)
    middle, half = (lo + hi) / 2, 0.55 * (hi - lo).max()
    return (middle[0] - half, middle[0] + half), (middle[1] - half, middle[1] + half)


def _fit_panel(ax, result, limits):
    """Draws the target p (samples from a fixed c, 1- and 2-sigma ellipses) and returns update(index), which
    draws the fitted q at history entry `index` (None: the final parameters) with the same fixed c. The artists
    are reused between GIF frames."""
    noise = result["vis_noise"].numpy()
    target_mu, target_cov = result["target_mu"].numpy(), result["target_cov"].numpy()
    hist_mu, hist_Q, steps = (result["history"][k].numpy() for k in ("mu", "Q", "step"))
    p_samples = target_mu + noise[0] @ result["target_S"].numpy().T
    ax.scatter(p_samples[:, 0], p_samples[:, 1], s=8, c="tab:blue", alpha=0.6, label="target p")
    q_scatter = ax.scatter([], [], s=8, c="tab:orange", marker="x", alpha=0.8, label="fitted q")
    q_lines = []
    for radius, style in ((1.0, "-"), (2.0, "--")):
        e = _ellipse(target_mu, target_cov, radius)
        ax.plot(e[:, 0], e[:, 1], style, c="tab:blue", lw=1)
        q_lines.append((radius, ax.plot([], [], style, c="tab:orange", lw=1)[0]))
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_xlim(limits[0])
    ax.set_ylim(limits[1])
    ax.set_aspect("equal", adjustable="box")

    def update(index=None):
        if index is None:
            mu, Q, step = result["mu"].numpy(), result["Q"].numpy(), steps[-1]
        else:
            mu, Q, step = hist_mu[index], hist_Q[index], steps[index]
        q_scatter.set_offsets((mu + noise[1] @ Q.T)[:, :2])
        for radius, line in q_lines:
            e = _ellipse(mu, Q @ Q.T, radius)
            line.set_data(e[:, 0], e[:, 1])
        ax.set_title(f"{title_of(result)}, step {int(step)}")

    update(None)  # something to lay out (tight_layout) before the first frame
    return update


def save_plots(result, out_dir, animate=False, max_frames=120):
    """fit.png (final fit), curves.png (KL / cross-entropy, trace ratio, errors over training); with `animate`,
    fit.gif over the recorded history. Only the first two coordinates are drawn when dim > 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []

    target_mu, target_cov = result["target_mu"].numpy(), result["target_cov"].numpy()
    final_mu, final_cov = result["mu"].numpy()[None], result["cov"].numpy()[None]
    fig, ax = plt.subplots(figsize=(5, 5))
    _fit_panel(ax, result, _limits(final_mu, final_cov, target_mu, target_cov))
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "fit.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    hist = result["history"]
    m = gaussian_metrics(hist["mu"], hist["cov"], result["target_mu"], result["target_cov"])
    steps = hist["step"].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(steps, m["kl"].numpy(), label="KL(q || p)")
    axes[0].plot(steps, m["cross_entropy"].numpy(), label="cross-entropy $-E_q \\log p$")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_title("objectives (ESD $\\lambda$=1 minimises KL)")
    axes[1].plot(steps, m["trace_ratio"].numpy())
    axes[1].axhline(1.0, c="k", lw=0.8, ls=":")
    axes[1].set_yscale("log")
    axes[1].set_title("tr($\\Sigma_q$) / tr($\\Sigma_p$)")
    axes[2].plot(steps, m["rel_frobenius_error"].numpy(), label="$\\|\\Sigma_q-\\Sigma_p\\|_F / \\|\\Sigma_p\\|_F$")
    axes[2].plot(steps, m["mean_error"].numpy(), label="$\\|\\mu_q-\\mu_p\\|$")
    axes[2].set_yscale("log")
    axes[2].set_title("errors")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    axes[2].legend()
    fig.suptitle(title_of(result))
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if animate:
        import imageio.v3 as iio

        frames_idx = np.unique(np.linspace(0, len(steps) - 1, min(max_frames, len(steps))).round().astype(int))
        limits = _limits(hist["mu"].numpy(), hist["cov"].numpy(), target_mu, target_cov)  # fixed over the run
        fig, ax = plt.subplots(figsize=(5, 5))
        update = _fit_panel(ax, result, limits)
        fig.tight_layout()
        frames = []
        for i in frames_idx:
            update(int(i))
            fig.canvas.draw()
            frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
        paths.append(os.path.join(out_dir, "fit.gif"))
        iio.imwrite(paths[-1], np.stack(frames), duration=80, loop=0)
    return paths


def format_report(result):
    fmt = lambda t: "[" + ", ".join(f"{v: .4f}" for v in t.tolist()) + "]"  # noqa: E731
    lines = [f"{title_of(result, tex=False)}: trained in {result['seconds']:.2f} s", "mean:"]
    lines.append(f"  fitted {fmt(result['mu'])}   target {fmt(result['target_mu'])}")
    lines.append("covariance (fitted | target):")
    for row_q, row_p in zip(result["cov"], result["target_cov"]):
        lines.append(f"  {fmt(row_q)} | {fmt(row_p)}")
    m = result["metrics"]
    lines.append(
        f"tr(Sigma_q)/tr(Sigma_p) = {m['trace_ratio']:.4f}   "
        f"||Sigma_q - Sigma_p||_F/||Sigma_p||_F = {m['rel_frobenius_error']:.4f}   "
        f"||mu_q - mu_p|| = {m['mean_error']:.4f}"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--lambda_coeff", type=float, default=1.0, help="ESD entropy weight (0 = VSD); esd only")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--out", default=None, help="plot folder (default outputs/esd-gaussian-toy/<method>)")
    parser.add_argument("--animate", action="store_true", help="also write fit.gif (slower)")
    parser.add_argument("--no_plots", action="store_true")
    args = parser.parse_args(argv)

    result = run_toy(args.method, args.lambda_coeff, args.steps, args.batch_size, args.lr, args.seed, args.dim)
    print(format_report(result))
    if not args.no_plots:
        tag = args.method if args.method != "esd" else f"esd-lambda{args.lambda_coeff:g}"
        out = args.out or os.path.join("outputs", "esd-gaussian-toy", tag)
        for path in save_plots(result, out, animate=args.animate):
            print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
