#!/usr/bin/env bash
# Trains the default PAR Transformer-XL SuperNet: 6 blocks, d_model 128, 4 heads, d_ffn 1024,
# mem_len 16, cutoffs 250,2500, dropout 0.1, Adam with 4000 warmup steps to max lr 1e-4 then
# cosine decay, tau 1.0 -> 0.1, 20 epochs, --precision=auto (bfloat16 where the hardware runs it natively).
# Those are train.py's defaults, the run name (base) and data directory included, so none is restated here.
# Builds the data first if it is missing. Extra arguments pass through: ./base_model.sh --epochs=1
# TensorFlow's start-up lines stay off the console (quiet_tensorflow.py); --verbose keeps them.
set -euo pipefail
cd "$(dirname "$0")"
data_dir=
for arg in "$@"; do
  case "$arg" in --data_dir=*) data_dir="${arg#--data_dir=}" ;; esac
done
if [ -z "$data_dir" ]; then  # train.py's default, config.DEFAULT_DATA_DIR (config.py imports no TensorFlow).
  data_dir=$(python3 -c 'import config; print(config.DEFAULT_DATA_DIR)' 2>/dev/null) \
    || { echo "base_model.sh: error: python3 cannot import config; pip install -r requirements.txt" >&2; exit 1; }
fi
if [ ! -f "$data_dir/metadata.json" ]; then
  ./create_tfrecords.sh --output_dir="$data_dir"
fi
exec python3 train.py "$@"
