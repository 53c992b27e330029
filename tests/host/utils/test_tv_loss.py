"""tv_loss follows threestudio's definition: 2/B * (sum dy^2 / (C(H-1)W) + sum dx^2 / (CH(W-1)))."""
import torch

from threestudio_lucid.host.utils.loss import tv_loss


def test_constant_image_has_zero_tv():
    assert tv_loss(torch.full((2, 3, 5, 7), 0.7)).item() == 0.0


def test_two_by_two_hand_computation():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    # vertical diffs 3, 4 -> 25 / (1*1*2); horizontal diffs 1, 2 -> 5 / (1*2*1)
    assert torch.isclose(tv_loss(x), torch.tensor(2 * (25 / 2 + 5 / 2)))


def test_batch_mean_over_images():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    # the sums run over the whole batch, then divide by B: (30 + 0) / 2
    assert torch.isclose(tv_loss(x), torch.tensor(15.0))


def test_matches_loop_definition_on_a_random_tensor_and_has_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 6, requires_grad=True)
    v = x.detach().tolist()
    b, c, h, w = x.shape
    cells = [(n, k) for n in range(b) for k in range(c)]
    dy = sum((v[n][k][i + 1][j] - v[n][k][i][j]) ** 2 for n, k in cells for i in range(h - 1) for j in range(w))
    dx = sum((v[n][k][i][j + 1] - v[n][k][i][j]) ** 2 for n, k in cells for i in range(h) for j in range(w - 1))
    expected = 2 * (dy / (c * (h - 1) * w) + dx / (c * h * (w - 1))) / b
    loss = tv_loss(x)
    assert abs(loss.item() - expected) < 1e-4
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
