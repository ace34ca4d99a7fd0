#!/usr/bin/env bash
# Trains the default PAR Transformer-XL SuperNet: 6 blocks, d_model 128, 4 heads, d_ffn 1024,
# mem_len 16, cutoffs 250,2500, dropout 0.1, Adam with 4000 warmup steps to max lr 1e-4 then
# cosine decay, tau 1.0 -> 0.1, 20 epochs, --precision=auto (bfloat16 where the hardware runs it natively).
# Those are train.py's defaults, the run name (base) and data directory included, so none is restated here.
# Extra arguments pass through: ./base_model.sh --epochs=1. A preset is a flag file (paths from the
# repository's root): ./base_model.sh --flagfile=configs/wt103_base.flags
# Builds the data first if the directory train.py will read is missing: with the preset's
# configs/NAME.data.flags beside a --flagfile=configs/NAME.flags, else with build_data.py's defaults.
# TensorFlow's start-up lines stay off the console (quiet_tensorflow.py); --verbose keeps them.
set -euo pipefail
cd "$(dirname "$0")"
# train.py's --data_dir as absl reads the arguments, flag files included (config.train_data_dir); empty if they
# do not parse, which train.py then reports.
data_dir=$(python3 -c 'import sys, config; print(config.train_data_dir(sys.argv[1:]) or "")' "$@" 2>/dev/null) \
  || { echo "base_model.sh: error: python3 cannot import config; pip install -r requirements.txt" >&2; exit 1; }
data_flags=
for arg in "$@"; do
  case "$arg" in --flagfile=*.flags)
    preset="${arg#--flagfile=}"
    if [ -f "${preset%.flags}.data.flags" ]; then data_flags="${preset%.flags}.data.flags"; fi ;;
  esac
done
if [ -n "$data_dir" ] && [ ! -f "$data_dir/metadata.json" ]; then
  if [ -n "$data_flags" ]; then
    ./create_tfrecords.sh --flagfile="$data_flags" --output_dir="$data_dir"
  else
    ./create_tfrecords.sh --output_dir="$data_dir"
  fi
fi
exec python3 train.py "$@"
