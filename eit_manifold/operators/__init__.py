"""Forward operators: EIT with the complete electrode model (:mod:`.eit`) and Gaussian blur (:mod:`.blur`)."""
