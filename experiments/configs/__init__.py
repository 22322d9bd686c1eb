"""One config dataclass per experiment (flax-examples layout); each experiment module re-exports its ``Config``."""
