"""Training recipes, run with `accelerate launch recipes/<script>.py`; shared pieces (data,
losses) live in importable modules beside the scripts. The libraries never import this."""
