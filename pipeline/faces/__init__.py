"""Faces: the web app. May import anything."""
