import os

__version__ = "0.1.0"

# onnxruntime's wheel carries a telemetry client that writes a device id and an event queue under
# ~/.cache/Microsoft and reaches for mobile.events.data.microsoft.com; only this variable, set before
# onnxruntime is imported, stops all of it. Every process of this product imports `runtime` first
# (the builder through `bundler`), so this is the one place it is set, and it is not overridable.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
