"""Training: configuration, compiled epochs, checkpoints."""

from fsnn.train.config import Config as Config
from fsnn.train.config import ConfigError as ConfigError
from fsnn.train.config import apply_overrides as apply_overrides
from fsnn.train.config import load_config as load_config
