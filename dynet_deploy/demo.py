"""The main job on the bundled model: the bundled recipe (``dynet_deploy/recipes/dy_resnet18_fmnist.json``) through ``deploy``.

Checkpoint -> export -> fuse -> TensorRT build (where present) -> validation on random inputs -> top-1 parity on
the test set -> latency, every artifact and report in ``out/demo``; the demo prints the closing tables. It runs on a
2-core CPU in well under three minutes.
"""

from __future__ import annotations

from pathlib import Path

from .deploy import DeployResult, format_tables, run_deploy
from .recipe import bundled_recipe_path, load_recipe


def run_demo(
    out_dir: str | Path = "out/demo",
    dataset: str = "auto",
    threads: int = 2,
    limit: int | None = None,
    progress: bool | None = None,
) -> DeployResult:
    """Deploy the bundled recipe into ``out_dir`` (a previous demo's folder there is replaced).

    ``dataset``: ``"auto"`` keeps the recipe's (Fashion-MNIST, falling back to sklearn's digits when it is not
    installed); ``"fashion-mnist"`` / ``"digits"`` force one.
    """
    recipe = load_recipe(bundled_recipe_path())
    return run_deploy(
        recipe,
        out_dir,
        force=True,
        dataset=None if dataset == "auto" else dataset,
        limit=limit,
        threads=threads,
        progress=progress,
    )


def format_summary(res: DeployResult) -> str:
    return format_tables(res)
