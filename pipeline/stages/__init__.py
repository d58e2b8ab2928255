"""Stages: one module (or package) per command: prepare, train, evaluate, suspects, predict, explain,
export, report, compare, preview. They import data, model and shared, never another stage."""
