"""dcn-explore: train the DCN-V2 family and see which feature crosses it learned.

>>> import dcn_explore as dx
>>> ds = dx.data.planted_crosses(n_samples=2000, seed=0)
>>> train, val, test = ds.split((0.8, 0.1, 0.1), seed=0)
>>> model = dx.DCNv2(ds.schema, dx.DCNConfig(cross_layers=1, structure="cross_only"), seed=0)
>>> result = dx.fit(model, train, val, dx.TrainConfig(epochs=1, progress=False))
>>> sorted(dx.evaluate(model, test))
['auc', 'logloss']
"""

from . import data, errors
from .checkpoint import load_checkpoint, save_checkpoint
from .crosses import CrossReport, crosses
from .sweep import sweep
from .tune import TuneResult, tune
from .errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from .model import DCNConfig, DCNv2
from .schema import FeatureSpec, Schema
from .train import TrainConfig, TrainResult, evaluate, fit, predict, resolve_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "data", "errors", "load_checkpoint", "save_checkpoint", "CrossReport", "crosses", "CheckpointError",
    "ConfigError", "DataError", "TrainingDivergedError", "DCNConfig", "DCNv2", "FeatureSpec", "Schema",
    "TrainConfig", "TrainResult", "evaluate", "fit", "predict", "resolve_device", "seed_everything", "sweep", "tune", "TuneResult",
]
