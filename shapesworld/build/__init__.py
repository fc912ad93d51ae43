r"""The scripts that built the shipped ShapesWorld models and their cards (`shapesworld/weights/`):
they train, package, calibrate, label and measure `shapes-tiny*` and `shapes-sd-tiny`. They are
not fine-tuning recipes (those are in `recipes/`, for a user's own model) and the libraries
never import this package. Run each from the repository root:

`train_shapes_clip`: train the tiny ShapesWorld CLIP (`shapes-tiny`) from scratch, or fine-tune
it on an oracle-labelled generated pool (`shapes-tiny-gen`, `shapes-tiny-gen2`):

    accelerate launch --cpu --num_processes 1 -m shapesworld.build.train_shapes_clip \
        --output-dir runs/shapes-tiny --steps 6000 --max-minutes 80

`package_shapes_clip`: ship a trained CLIP export with its measured model card:

    python -m shapesworld.build.package_shapes_clip --export runs/shapes-tiny/export \
        --out shapesworld/weights/shapes-tiny

`calibrate_threshold`: a shipped detector's eps for a false-flag rate on correct captions:

    python -m shapesworld.build.calibrate_threshold --model shapes-tiny --rate 0.1 --write

`generate_shapes_pool`: a pool of oracle-labelled `shapes-sd-tiny` images (for
`train_shapes_clip --generated-pool`):

    python -m shapesworld.build.generate_shapes_pool --output-dir runs/pool --parts 24

`train_shapes_t2i`: train `shapes-sd-tiny`, a tiny diffusers `StableDiffusionPipeline`:

    accelerate launch --cpu --num_processes 1 -m shapesworld.build.train_shapes_t2i \
        --output-dir runs/shapes-sd-tiny --max-minutes 45

`package_shapes_t2i`: ship a trained pipeline with its model card (and its loop eps):

    python -m shapesworld.build.package_shapes_t2i --run runs/shapes-sd-tiny --n 200

`calibrate_loop`: a detector's loop stop-rule eps on the pipeline's generated images, into the
pipeline's card:

    python -m shapesworld.build.calibrate_loop --detector shapes-tiny-gen2 --n 200 --rate 0.1

`label_loop_pool`: oracle-labelled images of `shapes-sd-tiny` for `clip4dm calibrate --data`:

    python -m shapesworld.build.label_loop_pool --output-dir runs/calibration --prompts 400

`measure_fixes`: what each loop fix buys over a fresh sample, into the verifier card:

    python -m shapesworld.build.measure_fixes --output-dir runs/fixes --prompts 300 \
        --verifier shapesworld/weights/shapes-sd-tiny/verifier.json

`contrastive` is no script: the CLIP losses `train_shapes_clip` trains with. `--help` on any
script lists its flags; the scripts' command lines come from `recipes.cli`.
"""
