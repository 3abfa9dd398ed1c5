"""The learned atlas: invertible blocks, charts, the mixture of charts, training, checkpoints."""

from eit_manifold.manifold.atlas import Atlas
from eit_manifold.manifold.chart import Chart, ChartConfig
from eit_manifold.manifold.checkpoint import bundled_atlases, load_atlas, save_atlas

__all__ = ["Atlas", "Chart", "ChartConfig", "bundled_atlases", "load_atlas", "save_atlas"]
