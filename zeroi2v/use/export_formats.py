"""What `zeroi2v.use.export` can write, in a module without torch, so that
`launch/export.py --help` lists the choices without importing torch (seconds)."""

FORMATS = ("torchscript", "onnx")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
