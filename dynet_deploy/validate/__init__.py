"""Validation: does the deployed graph compute what the PyTorch model computes?

Two checks, both against the PyTorch reference (BatchNorms unfolded: the model as trained):

* **Random inputs** (:func:`validate_random`, :mod:`.random_inputs`): fresh random inputs per batch size are run
  through PyTorch and through the backend with Polygraphy's ``Comparator``; max-abs and relative error
  (``||out - ref|| / ||ref||``) are measured per output and held to tolerances stated per precision
  (:mod:`.compare`). Inputs and reference outputs are saved in Polygraphy's JSON formats so that the printed
  command replays the check by hand on this machine (``polygraphy run ... --load-inputs ... --load-outputs ...``,
  or ``dynet-deploy run ... --load-outputs ...`` for a fused graph, which Polygraphy's --onnxrt cannot load).
* **A data set** (:func:`validate_dataset`, :mod:`.dataset`): top-1 of PyTorch and of the backend over a whole
  test set (classification), or mIoU on generated images and masks (segmentation), and their agreement.
"""

from ..backends import BACKENDS, require_backend
from ..errors import DynetDeployError
from .compare import AGREEMENT_TARGETS, TOLERANCES, Tolerance, errors, write_report
from .dataset import DatasetReport, mean_iou, reference_outputs, synthetic_segmentation, validate_dataset
from .random_inputs import RandomReport, read_graph_input, validate_random

__all__ = [
    "AGREEMENT_TARGETS",
    "BACKENDS",
    "DatasetReport",
    "DynetDeployError",
    "RandomReport",
    "TOLERANCES",
    "Tolerance",
    "errors",
    "mean_iou",
    "read_graph_input",
    "reference_outputs",
    "require_backend",
    "synthetic_segmentation",
    "validate_dataset",
    "validate_random",
    "write_report",
]
