"""Training engine: DeepSpeed wrapping (`parallel`), the train/eval loop (`trainer`), metrics,
what happens to a trained model (`release`), MLflow runs and registry (`tracking`, with the
stored model's format in `model_format`) and the tiny backbone's image pre-training.

Kept import-light: deepspeed is only imported by `parallel` when an engine is built.
"""
