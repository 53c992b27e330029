"""Random raw Gaussian parameters for the geometry tests (imported by basename: pytest puts this
folder on sys.path for the test files beside it)."""
import torch


def random_gaussians(n, sh_degree=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    return {
        "xyz": torch.randn(n, 3, generator=g),
        "f_dc": torch.randn(n, 1, 3, generator=g),
        "f_rest": torch.randn(n, k, 3, generator=g),
        "opacity": torch.randn(n, 1, generator=g),
        "scaling": torch.randn(n, 3, generator=g) - 3,
        "rotation": torch.randn(n, 4, generator=g),
    }
