import os

import runtime  # noqa: F401  (turns onnxruntime's telemetry off before any builder module imports it)

__version__ = "0.1.0"

# The builder runs offline: no library may reach for a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
