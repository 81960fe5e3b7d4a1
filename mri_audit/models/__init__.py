"""Models: loading user models and weights, contract checks, the ART estimator."""

#: What a model takes as input: an image (the zero-filled magnitude) or the masked k-space.
DOMAINS = ("image", "kspace")
#: Image-domain normalisations the adapter applies around a model.
NORMALIZATIONS = ("instance", "none")
