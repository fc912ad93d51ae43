"""Fine-tuning recipes, run with `accelerate launch recipes/<script>.py`; shared pieces (the
ShapesWorld wiring, the command lines) live in importable modules beside the scripts. The
scripts that built the shipped ShapesWorld models are `shapesworld.build`. The libraries never
import this."""
