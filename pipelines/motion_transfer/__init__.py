"""The product path: load a model (:mod:`.loading`, one module per family in :mod:`.backbones`), read the
input clip, invert it (:mod:`.inversion`), guide the target's sampling (:mod:`.pipeline_sma`,
:mod:`.optimization`) or fine-tune its motion (:mod:`.finetune`), and write the files (:mod:`.run`).
Nothing here imports a benchmark, the trainer or the web page."""
