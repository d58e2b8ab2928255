"""Stages: prepare, train, evaluate, suspects, predict, explain, export, report, compare, preview. Import data, model, shared."""
