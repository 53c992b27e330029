"""Image-space regularisers shared by systems."""

from .typing import Float, Tensor


def tv_loss(x: Float[Tensor, "B C H W"]) -> Float[Tensor, ""]:
    """Total variation, as threestudio defines it:

        2 / B * ( sum (x[..., i+1, :] - x[..., i, :])^2 / (C (H-1) W)
                + sum (x[..., :, j+1] - x[..., :, j])^2 / (C H (W-1)) )

    i.e. twice the mean squared vertical plus horizontal neighbour difference per image.
    """
    batch, channels, height, width = x.shape
    d_vert = x[:, :, 1:, :] - x[:, :, :-1, :]
    d_horiz = x[:, :, :, 1:] - x[:, :, :, :-1]
    vert = d_vert.pow(2).sum() / (channels * (height - 1) * width)
    horiz = d_horiz.pow(2).sum() / (channels * height * (width - 1))
    return 2 * (vert + horiz) / batch
