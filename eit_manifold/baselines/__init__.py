"""Classical baselines: Tikhonov and total variation for deblurring (:mod:`.image`) and EIT
(:mod:`.eit_linear`, :mod:`.eit_absolute`)."""

from eit_manifold.baselines.image import (
    BaselineResult,
    ParameterChoice,
    select_parameter,
    tikhonov_deblur,
    tv_deblur,
)

__all__ = ["BaselineResult", "ParameterChoice", "select_parameter", "tikhonov_deblur", "tv_deblur"]
