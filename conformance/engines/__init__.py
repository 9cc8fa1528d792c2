"""Engines agree: every guideline, per patient and as set-based SQL, patient by patient."""
