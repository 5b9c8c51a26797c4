#!/bin/bash
# GPU sittings of the bundled shapes model, for a lent accelerator (the `device` tool's `run`), which has
# PyTorch but not diffusers and no network. Prepare once, here, in the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata PyWavelets pytorch-wavelets
#
# then, with carry [".whl"]:
#
#   bash pipelines/training/shapes_training_device.sh MINUTES "NAME FLAGS..." ["NAME FLAGS..." ...]
#   e.g. bash pipelines/training/shapes_training_device.sh 6 "plain --batch-size 256" "attn16 --attention-at-16 --batch-size 256"
#
# Each quoted variant is one warm restart (--restart-minutes MINUTES, so it ends annealed whatever the GPU's
# speed) from the bundled weights (--init-from pipelines/shapes_model) with the shipped recipe plus its own
# flags. Several variants share the one GPU side by side: measured on one H200, one alone ran 3.8 steps/s
# at batch 256 (about 980 clips/s) and three together about 650 clips/s in all, so run side by side only
# to compare recipes in one call. Each re-encodes the pool of latents first (about 40 s). DEVICE=cpu (and
# "--clips 64" in a variant) runs it here as a smoke test. A variant that fails ends at once and its log
# says why. $OUT/models.tgz brings the models back (models/NAME): evaluate them, then copy the chosen
# folder over pipelines/shapes_model.
set -o pipefail
MINUTES=${1:?minutes per sitting}; shift
[ $# -gt 0 ] || { echo "name at least one variant: \"NAME FLAGS...\""; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# Video reading is not needed for training; a stand-in keeps the import of sma_guidance.video_io working.
mkdir -p /tmp/stub && printf 'def read_frames(*a, **k):\n    raise RuntimeError("no ffmpeg on this machine")\n' > /tmp/stub/imageio_ffmpeg.py
export PYTHONPATH=/tmp/site:$PWD:/tmp/stub PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used --format=csv
THREADS=$(( $(nproc) / $# )); [ "$THREADS" -ge 1 ] || THREADS=1
mkdir -p /tmp/models
for variant in "$@"; do
  read -r name flags <<< "$variant"
  rm -rf "/tmp/work_$name"
  # shellcheck disable=SC2086  # the variant's flags are meant to split
  python3 -m pipelines.training.shapes_training --device "${DEVICE:-cuda}" --threads "$THREADS" --workdir "/tmp/work_$name" \
    --init-from pipelines/shapes_model --unet-steps 7000 --offset-noise 0.15 --restart-minutes "$MINUTES" \
    --output "/tmp/models/$name" $flags 2>&1 | grep --line-buffered -v -E "Warn|kept in float32|cannot run|shards" > "$OUT/$name.log" &
done
wait
for variant in "$@"; do
  read -r name _ <<< "$variant"
  echo "== $name"; grep -E "unet step|grafted|Error|error" "$OUT/$name.log" | tail -4
done
cd /tmp && tar czf "$OUT/models.tgz" models && ls -la "$OUT"
