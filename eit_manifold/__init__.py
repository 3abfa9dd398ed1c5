"""eit-manifold: reconstruction on learned manifolds, EIT with the complete electrode model."""
__version__ = "0.1.0"
