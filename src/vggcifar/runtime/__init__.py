"""The runtime layer under export and serving: devices (:mod:`.devices`), onnxruntime sessions
(:mod:`.onnx`), TensorRT engines (:mod:`.tensorrt`) and the export/serving contract
(:mod:`.contract`: tensor names, metadata, what a model file is).

It imports nothing from :mod:`vggcifar.export` or :mod:`vggcifar.serving`; both import it.
Submodules are imported explicitly (``from vggcifar.runtime.contract import model_kind``) so
that the torch-free ones stay torch-free.
"""
