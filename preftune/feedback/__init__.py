"""Human feedback: the annotation store, the web app, exports for the trainers and agreement statistics."""
