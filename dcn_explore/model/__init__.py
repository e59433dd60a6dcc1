"""The DCN-V2 model family: cross layers (Eq. 1–4), embedding layer, structures (Fig. 1)."""

from .config import ACTIVATIONS, CROSSES, GATES, STRUCTURES, DCNConfig
from .cross import CrossNetwork, FullCross, LowRankCross, MixtureCross, VectorCross
from .dcn import DCNv2, DeepNetwork
from .embedding import FeatureEmbedding

__all__ = [
    "ACTIVATIONS", "CROSSES", "GATES", "STRUCTURES", "DCNConfig", "CrossNetwork", "FullCross",
    "LowRankCross", "MixtureCross", "VectorCross", "DCNv2", "DeepNetwork", "FeatureEmbedding",
]
