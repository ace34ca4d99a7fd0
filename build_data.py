"""Builds the tokenizer and context-batched TFRecords that train.py reads.

    python build_data.py                          # WikiText-2 (tokenized), downloaded if not found
    python build_data.py --corpus_dir ../shared/data/wikitext-2
    python build_data.py --dataset=wikitext-103   # or enwik8, text8
    python build_data.py --input_text my_corpus/  # a folder with train/valid/test files, or one file

The output directory holds metadata.json, unigram.txt, {train,valid,test}-*.tfrecord and, for a
word corpus, spm.model. It is built in a temporary directory and renamed at the end, so it is
complete or absent, even when the disk fills (one line names the output directory); the next build
removes what a killed one left. The build streams: its memory does not grow with the corpus (README, Data).
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import contextlib
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
import reliability
from config import DEFAULT_DATA_DIR, METADATA_FILE, TOKENIZER_FILE, UNIGRAM_FILE, define_verbose_flag


def define_flags(flag_values=None):
    """The flags, on absl's FLAGS or on `flag_values` (the tests' own)."""
    values = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
    flags.DEFINE_enum("dataset", data_utils.DEFAULT_DATASET, list(data_utils.DATASETS),
                      "Corpus to build: WikiText-2 or WikiText-103 (SentencePiece, word perplexity), enwik8 or text8 "
                      "(one id per character, bits per character).", **values)
    flags.DEFINE_enum("variant", "tokenized", list(data_utils.WIKITEXT2), "WikiText variant to use.", **values)
    flags.DEFINE_string("corpus_dir", None, "Local folder holding the dataset's files, as its zip holds them "
                        "(WikiText: wiki.{train,valid,test}.tokens; enwik8: enwik8; text8: text8); default for "
                        "WikiText-2: $WIKITEXT2_DIR.", **values)
    flags.DEFINE_alias("wikitext_dir", "corpus_dir", **values)
    flags.DEFINE_string("input_text", None, "Your own UTF-8 corpus instead of --dataset: a train/valid/test folder or "
                        "one file.", **values)
    flags.DEFINE_string("data_dir", "data", "Where corpora are looked for (extracted, or as their zip) and downloaded.",
                        **values)
    flags.DEFINE_string("output_dir", DEFAULT_DATA_DIR, "Where the tokenizer, records and metadata go.", **values)
    flags.DEFINE_integer("vocab_size", None,
                         "SentencePiece vocabulary size, reserved ids included (default: the dataset's, "
                         f"{data_utils.DEFAULT_VOCAB_SIZE} for WikiText-2 and your own text, "
                         f"{data_utils.WIKITEXT103['tokenized'].vocab_size} for WikiText-103); a character corpus' "
                         "vocabulary is its alphabet.", lower_bound=3, **values)
    flags.DEFINE_boolean("lowercase", data_utils.DEFAULT_LOWERCASE,
                         "Lowercase the text before tokenizing, as the reference run did.", **values)
    flags.DEFINE_enum("model_type", data_utils.DEFAULT_MODEL_TYPE, ["unigram", "bpe"], "SentencePiece model type.",
                      **values)
    flags.DEFINE_integer("tokenizer_sentences", data_utils.DEFAULT_TOKENIZER_SENTENCES,
                         "SentencePiece trains on all train lines, or where more of them are non-empty, on this many "
                         "of those drawn at random (seeded); it needs about 25x their text in memory.", lower_bound=1,
                         **values)
    flags.DEFINE_integer("batch_size", data_utils.DEFAULT_BATCH_SIZE, "Contiguous streams per batch.", lower_bound=1,
                         **values)
    flags.DEFINE_integer("seq_len", data_utils.DEFAULT_SEQ_LEN, "Tokens per segment.", lower_bound=1, **values)
    flags.DEFINE_integer("shards", data_utils.DEFAULT_SHARDS,
                         "TFRecord files per split; each holds a contiguous range of batches.", lower_bound=1, **values)
    flags.DEFINE_boolean("overwrite", False, "Replace an output directory that was built with other settings.",
                         **values)
    # quiet_tensorflow.py reads --verbose; build_data's own INFO lines are its progress, always shown.
    return define_verbose_flag(values["flag_values"])


def scan_splits(spans, expected_counts=None, alphabet=None):
    """Each split's counts, in one pass over it: lines and words, or with an `alphabet` (a character
    corpus) lines, characters and byte_counts; checks them against expected_counts, emptiness and the alphabet."""
    scans = {}
    for split, span in spans.items():
        if alphabet is None:
            counts = data_utils.scan_lines(span)
            replaced = counts.pop("replaced")
            if replaced:
                logging.warning("%s: replaced %d invalid UTF-8 sequences with U+FFFD.", span.path, replaced)
            if expected_counts:
                data_utils.check_counts(span.path, (counts["lines"], counts["words"]), expected_counts[split])
            empty = counts["non_empty_lines"] == 0
        else:
            byte_counts = data_utils.byte_counts(span)
            data_utils.check_alphabet(span, byte_counts, alphabet, split)
            counts = dict(lines=int(byte_counts[ord("\n")]), characters=span.size(), byte_counts=byte_counts)
            empty = counts["characters"] == 0
        if empty:
            raise data_utils.DataError(f"{span.path}: the {split} split is empty.")
        scans[split] = counts
    return scans


def built_settings(directory):
    """The settings `directory` was built with, or None if it holds no dataset of this script."""
    try:
        metadata = reliability.read_json(directory / METADATA_FILE)
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
            f"{output_dir} exists but is not a dataset built by build_data.py (no {METADATA_FILE} with build settings), "
            f"so it is not replaced, even with --overwrite; choose another --output_dir."
        )
    if found == settings:
        return True
    if not overwrite:
        raise data_utils.DataError(
            f"{output_dir} exists and was built with other settings (see its {METADATA_FILE}); "
            f"pass --overwrite to replace it, or choose another --output_dir."
        )
    return False


def tokenizer_lines(span, sample, non_empty_lines):
    """The train lines SentencePiece trains on: all of them, or a `sample` (build settings' tokenizer_sample)
    of its non_empty_lines."""
    lines = data_utils.read_lines(span)
    if sample is None:
        return lines
    non_empty = (line for line in lines if not data_utils.is_blank(line))
    return data_utils.random_sample(non_empty, non_empty_lines, sample["lines"], sample["seed"])


def tokenize_words(spans, directory, token_files, vocab_size, lowercase, model_type, lines):
    """Trains SentencePiece on `lines` of train (tokenizer_lines), ranks its ids by train frequency and writes each
    split's ranked ids into token_files; returns (how often each ranked id occurs in train, the ranking)."""
    model_path = pathlib.Path(directory) / TOKENIZER_FILE
    data_utils.train_sentencepiece(lines, model_path, vocab_size, lowercase, model_type)
    proto = model_path.read_bytes()
    unranked = data_utils.Tokenizer(proto, np.arange(vocab_size))
    piece_counts = data_utils.encode_lines_to_file(unranked.encode, data_utils.read_line_chunks(spans["train"]),
                                                   token_files["train"], vocab_size, "train")
    rank = data_utils.frequency_ranking(piece_counts)
    token_files["train"].rerank(rank)
    tokenizer = data_utils.Tokenizer(proto, rank)
    for split in ("valid", "test"):
        data_utils.encode_lines_to_file(tokenizer.encode, data_utils.read_line_chunks(spans[split]), token_files[split],
                                        vocab_size, split)
    counts = np.zeros_like(piece_counts)
    counts[rank] = piece_counts
    return counts, rank


def tokenize_characters(spans, token_files, alphabet, train_byte_counts):
    """Maps each byte of each split to its id (data_utils.character_ranking) into token_files; returns
    (vocabulary size, how often each id occurs in train, id_of_byte)."""
    id_of_byte = data_utils.character_ranking(alphabet, train_byte_counts)
    for split, span in spans.items():
        data_utils.encode_bytes_to_file(id_of_byte, span, token_files[split])
    vocab_size = int(id_of_byte.max()) + 1
    counts = np.zeros(vocab_size, np.int64)
    np.add.at(counts, id_of_byte[id_of_byte >= 0], train_byte_counts[id_of_byte >= 0])
    return vocab_size, counts, id_of_byte


def build_dataset(output_dir, sources, *, vocab_size=None, lowercase=data_utils.DEFAULT_LOWERCASE,
                  model_type=data_utils.DEFAULT_MODEL_TYPE, tokenizer_sentences=data_utils.DEFAULT_TOKENIZER_SENTENCES,
                  alphabet=None, batch_size=data_utils.DEFAULT_BATCH_SIZE, seq_len=data_utils.DEFAULT_SEQ_LEN,
                  shards=data_utils.DEFAULT_SHARDS, overwrite=False, expected_counts=None, source_name="", command=None):
    """Builds tokenizer, TFRecords, unigram file and metadata into `output_dir`, atomically, streaming.

    `sources` maps each split to its data_utils.Span. Without `alphabet`, SentencePiece of `vocab_size`
    pieces (default data_utils.DEFAULT_VOCAB_SIZE) tokenizes lines; with `alphabet` (bytes), each byte is
    one token of a vocabulary fixed by the alphabet, and vocab_size must stay None. Returns the metadata dict.
    """
    start = time.time()
    output_dir = pathlib.Path(output_dir)
    if alphabet is not None and vocab_size is not None:
        raise data_utils.DataError(f"--vocab_size {vocab_size}: {source_name} is a character corpus, whose vocabulary is "
                                   f"its {len(alphabet)}-symbol alphabet; drop --vocab_size.")
    scans = scan_splits(sources, expected_counts, alphabet)
    digests = {path: data_utils.file_digest(path) for path in {span.path for span in sources.values()}}
    sha256s = {split: digests[span.path] for split, span in sources.items()}
    if alphabet is None:
        vocab_size = vocab_size or data_utils.DEFAULT_VOCAB_SIZE
        settings = dict(source=source_name, source_sha256=sha256s, vocab_size=vocab_size, lowercase=lowercase,
                        model_type=model_type, batch_size=batch_size, seq_len=seq_len, shards=shards)
        if scans["train"]["non_empty_lines"] > tokenizer_sentences:  # Only a sample trains the tokenizer.
            settings["tokenizer_sample"] = dict(lines=tokenizer_sentences, seed=data_utils.TOKENIZER_SAMPLE_SEED)
    else:
        settings = dict(source=source_name, source_sha256=sha256s, alphabet=alphabet.hex(), batch_size=batch_size,
                        seq_len=seq_len, shards=shards)
    if up_to_date(output_dir, settings, overwrite):
        logging.info("%s is up to date with these settings; nothing to do.", output_dir)
        return data_utils.load_metadata(output_dir)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(output_dir)
    with staging_folder(output_dir) as staging:
        (staging / "streams").mkdir()  # Each split's token stream between tokenizing and batching.
        token_files = {split: data_utils.TokenFile(staging / "streams" / f"{split}.int32") for split in data_utils.SPLITS}
        if alphabet is None:
            sample, non_empty_lines = settings.get("tokenizer_sample"), scans["train"]["non_empty_lines"]
            text = (f"{tokenizer_sentences:,} random lines of its {non_empty_lines:,} non-empty ones" if sample
                    else f"all its {scans['train']['lines']:,} lines")
            logging.info("Training a %d-piece %s SentencePiece model on the train split's %s.", vocab_size, model_type,
                         text)
            try:
                counts, rank = tokenize_words(sources, staging, token_files, vocab_size, lowercase, model_type,
                                              tokenizer_lines(sources["train"], sample, non_empty_lines))
            except data_utils.DataError as error:
                if sample:
                    raise data_utils.DataError(f"The train split of {source_name}: the tokenizer's sample, {text}, is too "
                                               f"small for this vocabulary: {error} Lower --vocab_size or raise "
                                               f"--tokenizer_sentences.") from None
                raise data_utils.DataError(f"The train split of {source_name} is too small for this vocabulary: {error} "
                                           f"Lower --vocab_size.") from None
            tokenizer = dict(model_file=TOKENIZER_FILE, id_rank=rank.tolist())
        else:
            vocab_size, counts, id_of_byte = tokenize_characters(sources, token_files, alphabet,
                                                                 scans["train"].pop("byte_counts"))
            tokenizer = dict(id_of_byte=id_of_byte.tolist())
            for split in ("valid", "test"):
                scans[split].pop("byte_counts")
        split_metadata = {}
        for split in data_utils.SPLITS:
            stream = token_files[split]
            # Train drops its final partial segment; valid and test are padded so every token is scored.
            pad_id = None if split == "train" else data_utils.PAD_ID
            try:
                written = data_utils.write_tfrecords(stream, staging, split, batch_size, seq_len, pad_id, shards)
            except data_utils.DataError as error:
                raise data_utils.DataError(f"The {split} split of {source_name}: {error}") from None
            split_metadata[split] = dict(files=written["files"], batches=written["batches"], **scans[split],
                                         tokens=len(stream), predicted_tokens=written["predicted_tokens"])
            logging.info("%s: %s", split, {k: v for k, v in split_metadata[split].items() if k != "files"})
        shutil.rmtree(staging / "streams")
        np.savetxt(staging / UNIGRAM_FILE, counts / counts.sum(), fmt="%.10e")
        metadata = dict(
            settings=settings,
            vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len,
            pad_id=data_utils.PAD_ID, eol_id=data_utils.EOL_ID,
            splits=split_metadata,
            tokenizer=tokenizer,
            unigram_file=UNIGRAM_FILE,
            command=command or [],
        )
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        replace_directory(staging, output_dir)
    logging.info("Built %s in %.1f s.", output_dir, time.time() - start)
    return metadata


@contextlib.contextmanager
def staging_folder(output_dir):
    """A new folder beside `output_dir` to build it in, removed at the end whatever happens.

    A full disk anywhere in the block (token streams, tokenizer, TFRecords, metadata) ends it with one
    DiskFullError naming output_dir, whose volume is full, rather than the file in the staging folder that
    the error names, which is gone by then.
    """
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-building-{os.getpid()}-", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not.
    try:
        yield staging
    except Exception as error:  # An OSError, or TensorFlow's ResourceExhaustedError from a TFRecord writer.
        if reliability.disk_full_path(error) is None:
            raise
        raise reliability.DiskFullError(output_dir, "the build left nothing behind. Free some space and rerun the "
                                                    "same command.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_builds(output_dir):
    """Deletes what killed builds of `output_dir` left beside it, which would otherwise stay forever.

    Staging folders (`build_dataset`) and set-aside old datasets (`replace_directory`) are named with
    the building process's id, so those of a build still running are left alone.
    """
    left_by_build = re.compile(rf"\.{re.escape(output_dir.name)}-(building|old)-(\d+)(-\w+)?")
    for path in output_dir.parent.iterdir():
        match = left_by_build.fullmatch(path.name)
        if match and path.is_dir() and not reliability.process_alive(int(match[2])):
            logging.info("Removing %s, left by a killed build.", path)
            shutil.rmtree(path)


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
    """(Spans by split, the published Corpus or None for your own text, the source's name) from the flags."""
    if FLAGS.input_text:
        if FLAGS.dataset != data_utils.DEFAULT_DATASET or FLAGS.corpus_dir:
            raise data_utils.DataError("--input_text replaces --dataset and --corpus_dir; pass one or the other.")
        return data_utils.find_split_files(FLAGS.input_text), None, str(pathlib.Path(FLAGS.input_text).resolve())
    corpus = data_utils.find_corpus(FLAGS.dataset, FLAGS.variant)
    local_dir = FLAGS.corpus_dir or (os.environ.get("WIKITEXT2_DIR") if FLAGS.dataset == "wikitext-2" else None)
    folder = data_utils.locate_corpus(corpus, FLAGS.data_dir, local_dir)
    name = f"{FLAGS.dataset}/{FLAGS.variant}" if corpus.alphabet is None else FLAGS.dataset
    return data_utils.corpus_spans(corpus, folder), corpus, name


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        sources, corpus, source_name = resolve_sources()
        vocab_size = FLAGS.vocab_size or (corpus.vocab_size if corpus and corpus.alphabet is None else None)
        build_dataset(FLAGS.output_dir, sources, vocab_size=vocab_size, lowercase=FLAGS.lowercase,
                      model_type=FLAGS.model_type, tokenizer_sentences=FLAGS.tokenizer_sentences,
                      alphabet=corpus.alphabet if corpus else None, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len,
                      shards=FLAGS.shards, overwrite=FLAGS.overwrite,
                      expected_counts=corpus.expected_counts if corpus else None, source_name=source_name,
                      command=sys.argv)
    except (data_utils.DataError, reliability.DiskFullError) as error:
        sys.exit(f"build_data.py: error: {error}")
    except OSError as error:  # Unreadable input, read-only or full output.
        sys.exit(f"build_data.py: error: {data_utils.error_line(error)}")


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
