"""Training engine: DeepSpeed wrapping (`parallel`), the train/eval loop (`trainer`), what a
checkpoint holds and how a run resumes (`train_state`, `position`), what happens to a trained
model (`release`, `loading`), with two rooms of their own: MLflow (`tracking/`) and the
scores of a model (`evaluation/`).

Kept import-light: deepspeed is only imported by `parallel` when an engine is built.
"""
