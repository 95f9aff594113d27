"""speedtrain: train compact, fast text classifiers and ship them."""

__version__ = "0.1.0"

import os as _os

from speedtrain.config import default_cache_dir as _cache

# matplotlib (imported by torchmetrics, used for benchmark.png) writes a font cache under ~/.config or ~/.cache
# unless MPLCONFIGDIR says where: keep it in speedtrain's cache folder, nothing else under $HOME
_os.environ.setdefault("MPLCONFIGDIR", str(_cache() / "matplotlib"))
