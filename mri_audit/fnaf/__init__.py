"""FNAF: features and shapes, criteria, the scoring engine, the attack base class, the registry."""
