"""Faces: what runs the stages for a user: the command registry and the web app. May import anything
(of a stage, only its entry points)."""
