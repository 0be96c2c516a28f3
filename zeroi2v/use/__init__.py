"""Everything that uses a trained model: predict, serve, export, time, visualise.

The top layer beside `tune`: it imports config, data, models and engine, nothing imports it
(MLflow finds `serving` by the loader name a logged model carries, see
`engine.tracking.model_format`).
"""
