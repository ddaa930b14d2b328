"""One error type per stage. The CLI prints these without a traceback and exits non-zero."""


def summarise(text: object, limit: int = 240) -> str:
    """Another library's message on one line, at most ``limit`` characters, never cut mid-word or mid-sentence.

    Where the text is longer, it keeps whole sentences (up to the last '. ' that fits), else whole words followed
    by '...', so that what is left does not read as different advice than the library gave.
    """
    one = " ".join(str(text).split())
    if len(one) <= limit:
        return one
    head = one[:limit]
    end = head.rfind(". ")
    if end >= limit // 3:
        return head[: end + 1] + " (...)"
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip(",;:") + " (...)"


class DynetDeployError(Exception):
    """Base class: the message says what was wrong and what to do."""

    stage = "dynet-deploy"


class ModelError(DynetDeployError):
    stage = "model"


class CheckpointError(DynetDeployError):
    stage = "checkpoint"


class TrainError(DynetDeployError):
    stage = "train"


class ExportError(DynetDeployError):
    stage = "export"


class FuseError(DynetDeployError):
    stage = "fuse"


class BuildError(DynetDeployError):
    stage = "build"


class RuntimeBackendError(DynetDeployError):
    stage = "runtime"


class ValidationError(DynetDeployError):
    stage = "validate"


class DataError(DynetDeployError):
    stage = "data"


class BenchError(DynetDeployError):
    stage = "bench"


class DemoError(DynetDeployError):
    stage = "demo"


class RunError(DynetDeployError):
    stage = "run"


class MissingDependencyError(DynetDeployError):
    """An optional component (TensorRT, CUDA, the plugin library) is absent."""

    stage = "dependency"


class RecipeError(DynetDeployError):
    """A deployment recipe (dynet_deploy/recipes/*.json) is unreadable or has a wrong field."""

    stage = "recipe"


class TritonError(DynetDeployError):
    """Writing a Triton Inference Server model repository failed."""

    stage = "triton"


class DeployError(DynetDeployError):
    """``deploy`` itself (its output folder); each stage it runs raises its own error type."""

    stage = "deploy"
