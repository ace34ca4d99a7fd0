#!/usr/bin/env bash
# Builds the SentencePiece tokenizer and context-batched TFRecords into data/tfrecords.
# Uses a local WikiText-2 (--wikitext_dir or $WIKITEXT2_DIR, or data/wikitext-2), else downloads it.
# Every flag of build_data.py passes through, e.g. ./create_tfrecords.sh --vocab_size=8000
set -euo pipefail
cd "$(dirname "$0")"
exec python3 build_data.py "$@"
