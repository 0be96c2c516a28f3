"""Scores of a trained model: multi-view top-1/top-5 for classification (`metrics`), and for
detection the person-box predictions (`detection`) scored by the official frame-level
mAP@0.5 (`ava_map`).

Apart from the loop so that what a number means is read in one place; `tasks` picks which
evaluation a run's ``model.task`` gets.
"""
