#!/usr/bin/env bash
# Builds the tokenizer and context-batched TFRecords into data/tfrecords.
# --dataset=wikitext-2 (the default), wikitext-103, enwik8 or text8; uses a local copy (--corpus_dir, for
# WikiText-2 also $WIKITEXT2_DIR, or data/), else downloads it.
# Every flag of build_data.py passes through, e.g. ./create_tfrecords.sh --dataset=enwik8 --output_dir=data/enwik8
set -euo pipefail
cd "$(dirname "$0")"
exec python3 build_data.py "$@"
