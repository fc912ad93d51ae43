"""clip4dm generation: the diffusers feedback loop (score, re-weight, regenerate).

Not built yet: it is the subject of a later issue and builds on `feedback` and ShapesWorld.
Nothing is exported here so far.
"""
