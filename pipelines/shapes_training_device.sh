#!/bin/bash
# One GPU sitting of the bundled shapes model, for a lent accelerator (the `device` tool's `run`), which has
# PyTorch but not diffusers and no network. Prepare here, in the repository root:
#
#   echo /.whl/ >> .git/info/exclude; echo /.devwork/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata PyWavelets pytorch-wavelets
#   mkdir -p .devwork && cp WORKDIR/{vae.pt,unet.pt,log.json} .devwork/    # a CPU run's --workdir (no pool.pt)
#
# then run `bash pipelines/shapes_training_device.sh MINUTES BATCH OBJECT_WEIGHT` with carry [".whl", ".devwork"] in every
# call (a carried path left out of a call is removed there). A short smoke sitting runs first so that a broken
# environment fails in seconds; the pool of latents is re-encoded there (about a minute); the sitting is a warm
# restart (--restart-minutes) that ends annealed whatever the GPU's speed. $OUT/model.tgz brings the model
# back: unpack it and copy its folder over pipelines/shapes_model. Measured on one H200: 7.2 steps/s at
# batch 64 (the step is CPU-bound: captions, tokenizer, noise drawn on the host).
set -o pipefail
MINUTES=${1:-6.5}; BATCH=${2:-64}; OBJECT_WEIGHT=${3:-1}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# Video reading is not needed for training; a stand-in keeps the import of sma_guidance.video_io working.
mkdir -p /tmp/stub && printf 'def read_frames(*a, **k):\n    raise RuntimeError("no ffmpeg on this machine")\n' > /tmp/stub/imageio_ffmpeg.py
export PYTHONPATH=/tmp/site:$PWD:/tmp/stub PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used --format=csv
# sitting WORKDIR MINUTES OUTPUT [more flags]: a warm restart with the shipped recipe, library chatter filtered out
sitting() {
  python3 -m pipelines.shapes_training --device cuda --workdir "$1" --restart-minutes "$2" --output "$3" "${@:4}" \
    --unet-steps 7000 --offset-noise 0.15 --batch-size "$BATCH" --object-weight "$OBJECT_WEIGHT" 2>&1 | grep -v -E "Warn|kept in float32|cannot run|shards"
}
rm -rf /tmp/smoke && mkdir /tmp/smoke && cp .devwork/{vae.pt,unet.pt,log.json} /tmp/smoke/
sitting /tmp/smoke 0.15 /tmp/smoke/model --clips 256 | tail -4 | tee "$OUT/smoke.log" || exit 2
grep -q "saved the shapes model" "$OUT/smoke.log" || exit 3
sitting .devwork "$MINUTES" /tmp/model > "$OUT/train.log"
tail -3 "$OUT/train.log"
cd /tmp && tar czf "$OUT/model.tgz" model && ls -la "$OUT"
