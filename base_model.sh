#!/usr/bin/env bash
# Trains the default PAR Transformer-XL SuperNet: 6 blocks, d_model 128, 4 heads, d_ffn 1024,
# mem_len 16, cutoffs 250,2500, dropout 0.1, Adam with 4000 warmup steps to max lr 1e-4 then
# cosine decay, tau 1.0 -> 0.1, 20 epochs, --precision=auto (bfloat16 where the hardware runs it natively).
# Those are train.py's defaults, the run name (base) and data directory included, so none is restated here.
# Builds the data first if it is missing. Extra arguments pass through: ./base_model.sh --epochs=1
set -euo pipefail
cd "$(dirname "$0")"
data_dir=
for arg in "$@"; do
  case "$arg" in --data_dir=*) data_dir="${arg#--data_dir=}" ;; esac
done
if [ -z "$data_dir" ]; then  # train.py's default, data_utils.DEFAULT_DATA_DIR (TensorFlow's start-up log hidden).
  data_dir=$(python3 -c 'import data_utils; print(data_utils.DEFAULT_DATA_DIR)' 2>/dev/null) \
    || { echo "base_model.sh: error: python3 cannot import data_utils; pip install -r requirements.txt" >&2; exit 1; }
fi
# TensorFlow prints its start-up lines (oneDNN, CUDA probing, CPU features) before any log level
# applies (tensorflow/tensorflow#100442), so they are filtered here; --verbose keeps them.
startup_lines='^(WARNING: All log messages before absl::InitializeLog|[IE]0000 [^]]*(port|cudart_stub|cpu_feature_guard|cuda_platform)\.cc:[0-9]+\]|To enable the following instructions)'
case " $* " in
  *" --verbose "* | *" --verbose=true "* | *" --verbose=1 "*) startup_lines='^$.' ;;
  *) export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}" ;;  # And its later INFO lines, e.g. TFRecordDataset's.
esac
quiet() { "$@" 2> >(grep --line-buffered -v -E "$startup_lines" >&2); }
if [ ! -f "$data_dir/metadata.json" ]; then
  quiet ./create_tfrecords.sh --output_dir="$data_dir"
fi
quiet python3 train.py "$@"
