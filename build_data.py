"""Builds the tokenizer and context-batched TFRecords that train.py reads.

    python build_data.py                          # WikiText-2 (tokenized), downloaded if not found
    python build_data.py --wikitext_dir ../shared/data/wikitext-2
    python build_data.py --input_text my_corpus/  # a folder with train/valid/test files, or one file

The output directory holds spm.model, unigram.txt, metadata.json and {train,valid,test}-*.tfrecord.
It is built in a temporary directory and renamed at the end, so it is complete or absent; the next
build removes what a killed one left.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import json
import os
import pathlib
import re
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
flags.DEFINE_string("output_dir", data_utils.DEFAULT_DATA_DIR, "Where the tokenizer, records and metadata go.")
flags.DEFINE_integer("vocab_size", data_utils.DEFAULT_VOCAB_SIZE,
                     "SentencePiece vocabulary size, reserved ids included.")
flags.DEFINE_boolean("lowercase", data_utils.DEFAULT_LOWERCASE,
                     "Lowercase the text before tokenizing, as the reference run did.")
flags.DEFINE_enum("model_type", data_utils.DEFAULT_MODEL_TYPE, ["unigram", "bpe"], "SentencePiece model type.")
flags.DEFINE_integer("batch_size", data_utils.DEFAULT_BATCH_SIZE, "Contiguous streams per batch.", lower_bound=1)
flags.DEFINE_integer("seq_len", data_utils.DEFAULT_SEQ_LEN, "Tokens per segment.", lower_bound=1)
flags.DEFINE_integer("shards", data_utils.DEFAULT_SHARDS,
                     "TFRecord files per split; each holds a contiguous range of batches.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace an output directory that was built with other settings.")


def read_text(path, what):
    """A file's lines, with a warning when invalid UTF-8 had to be replaced."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise data_utils.DataError(f"{path}: no such file ({what}).")
    lines, replaced = data_utils.read_lines(path)
    if replaced:
        logging.warning("%s: replaced %d invalid UTF-8 sequences with U+FFFD.", path, replaced)
    return lines


def read_splits(sources, expected_counts=None):
    """Reads each split's lines, checking counts where known; returns (lines, sha256s) by split.

    `sources` maps each split to its file, or is one file cut into the three splits. Each split's
    sha256 is its file's, so an edited file is a change of settings.
    """
    if isinstance(sources, dict):
        lines = {split: read_text(path, f"the {split} split") for split, path in sources.items()}
        files = sources
    else:
        lines = data_utils.cut_splits(read_text(sources, "--input_text"), sources)
        files = dict.fromkeys(lines, sources)
    for split, path in files.items():
        if expected_counts:
            data_utils.check_counts(path, lines[split], expected_counts[split])
        if not any(line.strip() for line in lines[split]):
            raise data_utils.DataError(f"{path}: the {split} split is empty.")
    return lines, {split: data_utils.sha256_of(path) for split, path in files.items()}


def built_settings(directory):
    """The settings `directory` was built with, or None if it holds no dataset of this script."""
    try:
        metadata = json.loads((directory / data_utils.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return metadata.get("settings") if isinstance(metadata, dict) else None


def up_to_date(output_dir, settings, overwrite):
    """True if `output_dir` holds a complete build with these settings; refuses other settings unless `overwrite`.

    A folder that is not a dataset (no metadata.json with settings) is never replaced: it may hold anything.
    """
    if not output_dir.exists():
        return False
    found = built_settings(output_dir)
    if found is None:
        raise data_utils.DataError(
            f"{output_dir} exists but is not a dataset built by build_data.py (no {data_utils.METADATA_FILE} with build settings), "
            f"so it is not replaced, even with --overwrite; choose another --output_dir."
        )
    if found == settings:
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


def build_dataset(output_dir, sources, *, vocab_size=data_utils.DEFAULT_VOCAB_SIZE,
                  lowercase=data_utils.DEFAULT_LOWERCASE, model_type=data_utils.DEFAULT_MODEL_TYPE,
                  batch_size=data_utils.DEFAULT_BATCH_SIZE, seq_len=data_utils.DEFAULT_SEQ_LEN,
                  shards=data_utils.DEFAULT_SHARDS, overwrite=False, expected_counts=None, source_name="",
                  command=None):
    """Builds tokenizer, TFRecords, unigram file and metadata into `output_dir`, atomically.

    `sources` maps each split to its file, or is one file to cut into splits. Returns the metadata dict.
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
    remove_stale_builds(output_dir)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-building-{os.getpid()}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not.
    try:
        logging.info("Training a %d-piece %s SentencePiece model on %d lines.", vocab_size, model_type, len(lines["train"]))
        try:
            streams, rank = tokenize_splits(lines, staging, vocab_size, lowercase, model_type)
        except data_utils.DataError as error:
            raise data_utils.DataError(f"The train split of {source_name} is too small for this vocabulary: {error}") from None
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


def remove_stale_builds(output_dir):
    """Deletes what killed builds of `output_dir` left beside it, which would otherwise stay forever.

    Staging folders (`build_dataset`) and set-aside old datasets (`replace_directory`) are named with
    the building process's id, so those of a build still running are left alone.
    """
    left_by_build = re.compile(rf"\.{re.escape(output_dir.name)}-(building|old)-(\d+)(-\w+)?")
    for path in output_dir.parent.iterdir():
        match = left_by_build.fullmatch(path.name)
        if match and path.is_dir() and not process_alive(int(match[2])):
            logging.info("Removing %s, left by a killed build.", path)
            shutil.rmtree(path)


def process_alive(pid):
    """Whether process `pid` exists; a reused id only delays the cleanup of its folders."""
    try:
        os.kill(pid, 0)  # Signal 0 only asks whether the process exists.
    except ProcessLookupError:
        return False
    except PermissionError:  # It does, as another user's.
        pass
    return True


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
    except OSError as error:  # Unreadable input, read-only or full output.
        sys.exit(f"build_data.py: error: {data_utils.error_line(error)}")


if __name__ == "__main__":
    app.run(main)
