"""Training engine: DeepSpeed wrapping (`parallel`), the train/eval loop (`trainer`), metrics.

Kept import-light: deepspeed is only imported by `parallel` when an engine is built.
"""
