"""Classical baselines: Tikhonov and total variation for deblurring (:mod:`.image`) and EIT
(:mod:`.eit_linear`, :mod:`.eit_absolute`)."""

from eit_manifold.baselines.image import BaselineResult, tikhonov_deblur, tv_deblur

__all__ = ["BaselineResult", "tikhonov_deblur", "tv_deblur"]
