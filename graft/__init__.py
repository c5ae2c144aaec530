"""graft: transfer learning from pretrained backbones to a served ONNX model.

The repository's top-level folders install as this namespace: `graft.artifact`, `graft.models`,
`graft.export`, `graft.service`, `graft.batch`, `graft.benchmarks`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graft")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
