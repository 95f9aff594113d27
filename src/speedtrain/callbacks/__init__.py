"""Lightning callbacks: thin wrappers over the pure functions of ``export`` and ``bench``."""
