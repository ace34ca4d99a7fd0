"""Builds the tokenizer and context-batched TFRecords that train.py reads.

    python build_data.py                          # WikiText-2 (tokenized), downloaded if not found
    python build_data.py --wikitext_dir ../shared/data/wikitext-2
    python build_data.py --input_text my_corpus/  # a folder with train/valid/test files, or one file

The output directory holds spm.model, unigram.txt, metadata.json and {train,valid,test}-*.tfrecord.
It is built in a temporary directory and renamed at the end, so it is complete or absent.
"""
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

import data_utils

FLAGS = flags.FLAGS
flags.DEFINE_enum("variant", "tokenized", list(data_utils.WIKITEXT2), "WikiText-2 variant to use.")
flags.DEFINE_string("wikitext_dir", os.environ.get("WIKITEXT2_DIR"),
                    "Local folder holding the variant's wiki.{train,valid,test} files (default: $WIKITEXT2_DIR).")
flags.DEFINE_string("input_text", None, "Your own UTF-8 corpus instead of WikiText-2: a train/valid/test folder or one file.")
flags.DEFINE_string("data_dir", "data", "Where WikiText-2 is looked for and downloaded.")
flags.DEFINE_string("output_dir", "data/tfrecords", "Where the tokenizer, records and metadata go.")
flags.DEFINE_integer("vocab_size", 12000, "SentencePiece vocabulary size, reserved ids included.")
flags.DEFINE_boolean("lowercase", True, "Lowercase the text before tokenizing, as the reference run did.")
flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "SentencePiece model type.")
flags.DEFINE_integer("batch_size", 32, "Contiguous streams per batch.", lower_bound=1)
flags.DEFINE_integer("seq_len", 32, "Tokens per segment.", lower_bound=1)
flags.DEFINE_integer("shards", 1, "TFRecord files per split; each holds a contiguous range of batches.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace an output directory that was built with other settings.")


def read_splits(sources, expected_counts=None):
    """Reads each split's lines, checking counts where known; returns (lines, sha256s) by split."""
    lines, sha256s = {}, {}
    for split, source in sources.items():
        if isinstance(source, list):  # One --input_text file already cut into splits.
            lines[split] = source
            continue
        source = pathlib.Path(source)
        if not source.is_file():
            raise data_utils.DataError(f"{source}: no such file (the {split} split).")
        lines[split], replaced = data_utils.read_lines(source)
        sha256s[split] = data_utils.sha256_of(source)
        if replaced:
            logging.warning("%s: replaced %d invalid UTF-8 sequences with U+FFFD.", source, replaced)
        if expected_counts:
            data_utils.check_counts(source, lines[split], expected_counts[split])
        if not any(line.strip() for line in lines[split]):
            raise data_utils.DataError(f"{source}: the {split} split is empty.")
    return lines, sha256s


def up_to_date(output_dir, settings, overwrite):
    """True if `output_dir` holds a complete build with these settings; refuses other settings unless `overwrite`."""
    metadata_path = pathlib.Path(output_dir) / data_utils.METADATA_FILE
    if not pathlib.Path(output_dir).exists():
        return False
    if metadata_path.is_file() and json.loads(metadata_path.read_text()).get("settings") == settings:
        return True
    if not overwrite:
        raise data_utils.DataError(
            f"{output_dir} exists and was built with other settings (see its {data_utils.METADATA_FILE}); "
            f"pass --overwrite to replace it, or choose another --output_dir."
        )
    return False


def tokenize_splits(lines, directory, vocab_size, lowercase, model_type):
    """Trains the tokenizer on train, ranks ids by train frequency, returns (streams by split, rank)."""
    model_path = pathlib.Path(directory) / data_utils.TOKENIZER_FILE
    data_utils.train_sentencepiece(lines["train"], model_path, vocab_size, lowercase, model_type)
    proto = model_path.read_bytes()
    unranked = data_utils.Tokenizer(proto, np.arange(vocab_size))
    train_pieces = data_utils.encode_lines(unranked.encode, lines["train"])
    rank = data_utils.frequency_ranking(np.bincount(train_pieces, minlength=vocab_size))
    tokenizer = data_utils.Tokenizer(proto, rank)
    streams = {"train": rank[train_pieces].astype(np.int32)}
    for split in ("valid", "test"):
        streams[split] = data_utils.encode_lines(tokenizer.encode, lines[split])
    return streams, rank


def build_dataset(output_dir, sources, *, vocab_size=12000, lowercase=True, model_type="unigram",
                  batch_size=32, seq_len=32, shards=1, overwrite=False, expected_counts=None, source_name="",
                  command=None):
    """Builds tokenizer, TFRecords, unigram file and metadata into `output_dir`, atomically.

    `sources` maps each split to a file path (or a list of lines). Returns the metadata dict.
    """
    start = time.time()
    output_dir = pathlib.Path(output_dir)
    lines, sha256s = read_splits(sources, expected_counts)
    settings = dict(source=source_name, source_sha256=sha256s, vocab_size=vocab_size, lowercase=lowercase,
                    model_type=model_type, batch_size=batch_size, seq_len=seq_len, shards=shards)
    if up_to_date(output_dir, settings, overwrite):
        logging.info("%s is up to date with these settings; nothing to do.", output_dir)
        return data_utils.load_metadata(output_dir)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-building-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not.
    try:
        logging.info("Training a %d-piece %s SentencePiece model on %d lines.", vocab_size, model_type, len(lines["train"]))
        streams, rank = tokenize_splits(lines, staging, vocab_size, lowercase, model_type)
        split_metadata = {}
        for split in data_utils.SPLITS:
            # Train drops its final partial segment; valid and test are padded so every token is scored.
            pad_id = None if split == "train" else data_utils.PAD_ID
            try:
                windows = data_utils.context_batch(streams[split], batch_size, seq_len, pad_id)
            except data_utils.DataError as error:
                raise data_utils.DataError(f"The {split} split of {source_name}: {error}") from None
            targets = windows[:, :, 1:]
            split_metadata[split] = dict(
                files=data_utils.write_tfrecords(windows, staging, split, shards),
                batches=len(windows),
                lines=len(lines[split]),
                words=data_utils.count_words(lines[split]),
                tokens=len(streams[split]),
                predicted_tokens=int(np.sum(targets != data_utils.PAD_ID)),
            )
            logging.info("%s: %s", split, {k: v for k, v in split_metadata[split].items() if k != "files"})
        counts = np.bincount(streams["train"], minlength=vocab_size)
        np.savetxt(staging / data_utils.UNIGRAM_FILE, counts / counts.sum(), fmt="%.10e")
        metadata = dict(
            settings=settings,
            vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len,
            pad_id=data_utils.PAD_ID, eol_id=data_utils.EOL_ID,
            splits=split_metadata,
            tokenizer=dict(model_file=data_utils.TOKENIZER_FILE, id_rank=rank.tolist()),
            unigram_file=data_utils.UNIGRAM_FILE,
            command=command or [],
        )
        (staging / data_utils.METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        replace_directory(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("Built %s in %.1f s.", output_dir, time.time() - start)
    return metadata


def replace_directory(new, old):
    """Renames `new` to `old`, removing an existing `old` only once `new` is in place."""
    trash = None
    if old.exists():
        trash = old.with_name(f".{old.name}-old-{os.getpid()}")
        os.replace(old, trash)
    os.replace(new, old)
    if trash:
        shutil.rmtree(trash)


def resolve_sources():
    """Split files from the flags, plus the known counts to check them against (None for your own text)."""
    if FLAGS.input_text:
        return data_utils.find_split_files(FLAGS.input_text), None, str(pathlib.Path(FLAGS.input_text).resolve())
    corpus = data_utils.WIKITEXT2[FLAGS.variant]
    folder = data_utils.locate_corpus(corpus, FLAGS.data_dir, FLAGS.wikitext_dir, log=logging.info)
    sources = {split: folder / name for split, name in corpus.files.items()}
    return sources, corpus.expected_counts, f"wikitext-2/{FLAGS.variant}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        sources, expected_counts, source_name = resolve_sources()
        build_dataset(FLAGS.output_dir, sources, vocab_size=FLAGS.vocab_size, lowercase=FLAGS.lowercase,
                      model_type=FLAGS.model_type, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len,
                      shards=FLAGS.shards, overwrite=FLAGS.overwrite, expected_counts=expected_counts,
                      source_name=source_name, command=sys.argv)
    except data_utils.DataError as error:
        sys.exit(f"build_data.py: error: {error}")


if __name__ == "__main__":
    app.run(main)
