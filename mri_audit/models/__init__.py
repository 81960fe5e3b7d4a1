"""Models: loading user models and weights, contract checks, the ART estimator."""
