"""The PyTorch reference behind the same ``run({name: array}) -> {name: array}`` interface as the ONNX runners."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import RuntimeBackendError


class TorchRunner:
    """Runs ``model`` (eval mode, no grad) on one named input; outputs named like the exported graph's.

    The model is used as given (not copied, BatchNorms not folded): it is the reference the deployed
    graphs are compared with.
    """

    def __init__(
        self,
        model,
        input_names: Sequence[str] = ("input",),
        output_names: Sequence[str] = ("output",),
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        if len(self.input_names) != 1:
            raise RuntimeBackendError("TorchRunner runs models with exactly one input")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RuntimeBackendError(f"missing input(s) {missing}; the model takes {self.input_names}")
        x = torch.from_numpy(np.ascontiguousarray(feeds[self.input_names[0]])).to(self.device)
        with torch.no_grad():
            out = self.model(x)
        if isinstance(out, torch.Tensor):
            outs = [out]
        elif isinstance(out, dict):
            outs = list(out.values())
        else:
            outs = list(out)
        if len(outs) != len(self.output_names):
            raise RuntimeBackendError(
                f"the model returned {len(outs)} outputs, expected {len(self.output_names)} ({self.output_names})"
            )
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, outs)}
