"""MedVAE engine: models, codec, latent files, baselines, training, SR, analysis and reader studies.

No Qt anywhere in this package. Public entry points are re-exported here.
"""

from .codec.latents import Latent, load_latent, save_latent
from .codec.pipeline import CodecOptions, decode, encode, reconstruct
from .errors import MedVAEError  # noqa: E402
from .imaging.volume import Volume  # noqa: E402
from .models import list_models, load_model  # noqa: E402
from .runtime.progress import Progress
from .version import __version__  # noqa: E402

__all__ = [
    "CodecOptions",
    "Latent",
    "MedVAEError",
    "Progress",
    "Volume",
    "__version__",
    "decode",
    "encode",
    "list_models",
    "load_latent",
    "load_model",
    "reconstruct",
    "save_latent",
]
