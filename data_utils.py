"""Data library: WikiText-2 download and checks, SentencePiece tokenizer, context batching, TFRecords.

The token stream layout follows Transformer-XL. The N-token stream of a split is cut into
`batch_size` contiguous streams; batch k holds, for every row i,

    inputs  = stream_i[k*L : k*L + L]
    targets = stream_i[k*L + 1 : k*L + L + 1]

so row i of batch k+1 continues row i of batch k (segment memory depends on this) and every
token but the first of each stream is predicted exactly once. Each TFRecord example is one batch
stored as the window stream_i[k*L : k*L + L + 1] of every row, `[batch_size, seq_len + 1]`.

Ids seen by the model are ranked by training-set frequency (reserved ids first), because
adaptive softmax cutoffs assume frequent tokens have small ids. Every line of text, empty lines
included, is encoded as its pieces followed by the end-of-line id: that matches WikiText's own
convention of one `<eos>` per line, so word-level perplexity uses the published word counts.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

import reliability

SPLITS = ("train", "valid", "test")
PAD_ID = 0  # Never a target: padding counts in neither the numerator nor the denominator.
EOL_ID = 1  # Ends every line of text.
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "spm.model"
UNIGRAM_FILE = "unigram.txt"

# The default dataset, each of its defaults written only here: build_data.py's flags and build_dataset,
# bench.py's synthetic data and the scripts that read the dataset (--data_dir, --unigram_file) use these.
DEFAULT_DATA_DIR = "data/tfrecords"  # What ./create_tfrecords.sh builds and train.py reads.
DEFAULT_VOCAB_SIZE = 12000  # SentencePiece pieces, reserved ids included.
DEFAULT_LOWERCASE = True  # As the reference run did.
DEFAULT_MODEL_TYPE = "unigram"  # SentencePiece's model type.
DEFAULT_BATCH_SIZE = 32  # Contiguous streams per batch: the global batch.
DEFAULT_SEQ_LEN = 32  # Tokens per segment.
DEFAULT_SHARDS = 1  # TFRecord files per split.

# The dataset author's mirror; it answers 403 to Python's default User-Agent.
BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and what its splits must contain (lines, words with one end-of-line per line)."""

    url: str
    folder: str  # Folder inside the zip, and under the data directory once extracted.
    files: dict  # split -> file name inside `folder`.
    expected_counts: dict  # split -> (lines, words); None skips the check.


WIKITEXT2_COUNTS = {"train": (36_718, 2_088_628), "valid": (3_760, 217_646), "test": (4_358, 245_569)}
WIKITEXT2 = {
    "tokenized": Corpus(
        url="https://wikitext.smerity.com/wikitext-2-v1.zip",
        folder="wikitext-2",
        files={split: f"wiki.{split}.tokens" for split in SPLITS},
        expected_counts=WIKITEXT2_COUNTS,
    ),
    "raw": Corpus(
        url="https://wikitext.smerity.com/wikitext-2-raw-v1.zip",
        folder="wikitext-2-raw",
        files={split: f"wiki.{split}.raw" for split in SPLITS},
        expected_counts=WIKITEXT2_COUNTS,
    ),
}


class DataError(ValueError):
    """Bad input data or settings; the message names the file, flag or number at fault."""


def error_line(error):
    """The one line after `script.py: error:`: an OS error's path and reason, else the message's first line.

    TensorFlow and HDF5 put node names and other details on the lines below it.
    """
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return next(iter(str(error).splitlines()), type(error).__name__)


# ---------------------------------------------------------------------------------------------
# Reading text and checking it.


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lines(path):
    """Returns (lines without their line ends, number of invalid UTF-8 sequences replaced by U+FFFD)."""
    raw = pathlib.Path(path).read_bytes()
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count("\ufffd".encode())  # Each invalid sequence becomes one U+FFFD.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # The final line end closes the last line; it does not open an empty one.
    return lines, replaced


def count_words(lines):
    """Whitespace-separated words plus one end-of-line per line: WikiText's published token count."""
    return sum(len(line.split()) for line in lines) + len(lines)


def check_counts(path, lines, expected):
    """Raises DataError unless `lines` has the expected (line, word) counts."""
    actual = (len(lines), count_words(lines))
    if actual != tuple(expected):
        raise DataError(
            f"{path}: {actual[0]:,} lines and {actual[1]:,} words, expected {expected[0]:,} lines "
            f"and {expected[1]:,} words; the file is truncated or corrupted."
        )


# ---------------------------------------------------------------------------------------------
# Getting WikiText-2.


def download(url, destination, retries=3, backoff_seconds=2.0, timeout=60):
    """Downloads `url` to `destination` with a browser User-Agent, retrying; never leaves a partial file."""
    destination = pathlib.Path(destination)
    partial = destination.with_name(destination.name + ".partial")
    request = urllib.request.Request(url, headers={"User-Agent": BROWSER_USER_AGENT})
    last_error = None
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            os.replace(partial, destination)
            return destination
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            partial.unlink(missing_ok=True)
            if attempt < retries:
                time.sleep(backoff_seconds * attempt)
    raise DataError(
        f"Could not download {url} after {retries} attempts ({last_error}). Download and unzip it by hand, "
        f"then pass its folder with --wikitext_dir or the WIKITEXT2_DIR environment variable."
    )


def extract_corpus(zip_path, corpus, data_dir):
    """Extracts the corpus folder from `zip_path` into `data_dir`, checks every split, returns its path.

    A zip that is not a zip, lacks a split, or whose splits have the wrong counts is deleted,
    together with anything extracted from it.
    """
    target = pathlib.Path(data_dir) / corpus.folder
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for split, name in corpus.files.items():
                member = f"{corpus.folder}/{name}"
                try:
                    data = archive.read(member)
                except KeyError:
                    raise DataError(f"{zip_path}: has no {member}; it is not the {corpus.folder} archive.") from None
                (staging / name).write_bytes(data)
        for split, name in corpus.files.items():
            if corpus.expected_counts:
                check_counts(zip_path, read_lines(staging / name)[0], corpus.expected_counts[split])
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return target
    except (zipfile.BadZipFile, DataError) as error:
        pathlib.Path(zip_path).unlink(missing_ok=True)
        raise DataError(f"Rejected download {zip_path} (deleted): {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def locate_corpus(corpus, data_dir, local_dir=None, log=print):
    """Returns the folder holding the corpus splits: `local_dir` if given, else `data_dir/folder`, else a download."""
    if local_dir:
        folder = pathlib.Path(local_dir)
        if not folder.is_dir():
            raise DataError(f"--wikitext_dir / WIKITEXT2_DIR {folder}: no such directory.")
        return folder
    folder = pathlib.Path(data_dir) / corpus.folder
    if all((folder / name).is_file() for name in corpus.files.values()):
        return folder
    pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
    zip_path = pathlib.Path(data_dir) / pathlib.PurePosixPath(corpus.url).name
    log(f"Downloading {corpus.url} to {zip_path}")
    download(corpus.url, zip_path)
    folder = extract_corpus(zip_path, corpus, data_dir)
    zip_path.unlink()
    return folder


def find_split_files(path):
    """The `--input_text` corpus: each split's file, from a directory with train/valid/test files.

    One file is returned as its path, for `cut_splits` to divide once it has been read and checked
    like any split file.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"--input_text {path}: no such file or directory.")
    files = {}
    for split in SPLITS:
        matches = sorted(p for p in path.iterdir() if p.is_file() and split in p.name)
        if len(matches) != 1:
            raise DataError(
                f"--input_text {path}: expected exactly one file with '{split}' in its name, found "
                f"{[m.name for m in matches] or 'none'}."
            )
        files[split] = matches[0]
    return files


def cut_splits(lines, path):
    """Cuts one file's lines into contiguous train (90%), valid (5%) and test (5%) parts, by split."""
    if len(lines) < 3:
        raise DataError(f"--input_text {path}: {len(lines)} lines; need at least 3 to cut train/valid/test.")
    held_out = max(1, len(lines) // 20)
    return {
        "train": lines[: len(lines) - 2 * held_out],
        "valid": lines[len(lines) - 2 * held_out : len(lines) - held_out],
        "test": lines[len(lines) - held_out :],
    }


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def train_sentencepiece(lines, model_path, vocab_size, lowercase=DEFAULT_LOWERCASE, model_type=DEFAULT_MODEL_TYPE):
    """Trains SentencePiece on the training lines; reserves pad, end-of-line and keeps `<unk>` one piece.

    Ids here are SentencePiece's own; `frequency_ranking` then reorders them.
    """
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(model_path).removesuffix(".model"),
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            pad_piece="<pad>",
            eos_id=1,
            eos_piece="<eol>",
            unk_id=2,
            unk_piece="<oov>",  # Pieces never seen in training; WikiText's own "<unk>" is an ordinary piece.
            bos_id=-1,
            user_defined_symbols=["<unk>"],
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            character_coverage=1.0,
            max_sentence_length=1 << 16,  # WikiText paragraphs exceed the 4 kB default, which would skip them.
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise DataError(f"--vocab_size {vocab_size}: SentencePiece cannot train it on this corpus ({error}).") from None
    pathlib.Path(str(model_path).removesuffix(".model") + ".vocab").unlink(missing_ok=True)


def frequency_ranking(sentencepiece_counts):
    """Returns `rank` with rank[sentencepiece_id] = model id: pad and end-of-line first, then by count.

    Ties keep SentencePiece's order, so the ranking is deterministic.
    """
    counts = np.asarray(sentencepiece_counts, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    order = np.concatenate([[PAD_ID, EOL_ID], order[(order != PAD_ID) & (order != EOL_ID)]])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank


class Tokenizer:
    """SentencePiece applied in the TF graph, with ids ranked by training frequency.

    `encode` maps strings to model ids (each line followed by the end-of-line id); `decode` inverts it.
    """

    def __init__(self, model_proto, rank):
        self._sentencepiece = tf_text.SentencepieceTokenizer(model=model_proto, out_type=tf.int32)
        self._to_model_id = tf.constant(rank, tf.int32)
        self._to_sentencepiece_id = tf.constant(np.argsort(rank), tf.int32)
        self.vocab_size = len(rank)

    @classmethod
    def load(cls, data_dir):
        metadata = load_metadata(data_dir)
        proto = (pathlib.Path(data_dir) / metadata["tokenizer"]["model_file"]).read_bytes()
        return cls(proto, metadata["tokenizer"]["id_rank"])

    def encode_sentencepiece(self, lines):
        """[N] strings -> ragged [N, (pieces + 1)] SentencePiece ids, each row ending with end-of-line."""
        pieces = self._sentencepiece.tokenize(lines)
        end_of_line = tf.fill([tf.shape(lines)[0], 1], tf.constant(EOL_ID, tf.int32))
        return tf.concat([pieces, tf.RaggedTensor.from_tensor(end_of_line)], axis=1)

    def encode(self, lines):
        """[N] strings -> ragged [N, (pieces + 1)] model ids."""
        return tf.ragged.map_flat_values(lambda ids: tf.gather(self._to_model_id, ids), self.encode_sentencepiece(lines))

    def decode(self, ids):
        """Model ids [T] -> one string in which every end-of-line id becomes a line break."""
        ids = tf.gather(self._to_sentencepiece_id, ids)
        line_of_id = tf.cumsum(tf.cast(tf.equal(ids, EOL_ID), tf.int32), exclusive=True)
        lines = tf.RaggedTensor.from_value_rowids(ids, line_of_id)  # End-of-line is a control piece: not printed.
        return tf.strings.reduce_join(self._sentencepiece.detokenize(lines), separator="\n")


def encode_lines(encode_fn, lines, batch_lines=4096):
    """Encodes a list of lines into one flat int32 stream through a tf.data pipeline."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(lines, tf.string) if lines else tf.zeros([0], tf.string))
    dataset = dataset.batch(batch_lines).map(lambda batch: encode_fn(batch).flat_values).prefetch(tf.data.AUTOTUNE)
    chunks = list(dataset.as_numpy_iterator())
    return np.concatenate(chunks) if chunks else np.zeros([0], np.int32)


# ---------------------------------------------------------------------------------------------
# Context batching and TFRecords.


def context_batch(stream, batch_size, seq_len, pad_id=None):
    """Cuts a token stream into `[num_batches, batch_size, seq_len + 1]` windows, Transformer-XL style.

    Row i of window k is stream_i[k*L : k*L + L + 1], where stream_i is the i-th of `batch_size`
    contiguous pieces of the stream; consecutive windows of a row share exactly one token. With
    `pad_id=None` the final partial segment (and the last len(stream) % batch_size tokens) is
    dropped; otherwise each row is padded at its end so that every token lands in a window.
    """
    stream = np.asarray(stream)
    num_tokens = len(stream)
    if pad_id is None:
        row_len = len(stream) // batch_size
        num_batches = (row_len - 1) // seq_len
    else:
        row_len = -(-len(stream) // batch_size)
        num_batches = -(-(row_len - 1) // seq_len)
        stream = np.concatenate([stream, np.full(batch_size * row_len - len(stream), pad_id, stream.dtype)])
    if num_batches < 1:
        raise DataError(
            f"{num_tokens:,} tokens are too few for batch_size {batch_size} x (seq_len {seq_len} + 1) = "
            f"{batch_size * (seq_len + 1):,}; lower --batch_size or --seq_len."
        )
    rows = stream[: batch_size * row_len].reshape(batch_size, row_len)
    if pad_id is not None:  # Pad each row's end up to whole segments.
        rows = np.pad(rows, [(0, 0), (0, num_batches * seq_len + 1 - row_len)], constant_values=pad_id)
    starts = np.arange(num_batches) * seq_len
    windows = rows[:, starts[:, None] + np.arange(seq_len + 1)]  # [B, num_batches, L + 1]
    return np.ascontiguousarray(windows.transpose(1, 0, 2))


def shard_ranges(num_batches, num_shards):
    """Contiguous [start, stop) batch ranges, as even as possible, covering every batch once in order."""
    bounds = np.linspace(0, num_batches, num_shards + 1).round().astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def write_tfrecords(windows, directory, split, num_shards=DEFAULT_SHARDS):
    """Writes one example per batch window, in order, into `num_shards` files; returns their names."""
    num_shards = max(1, min(num_shards, len(windows)))
    names = []
    for shard, (start, stop) in enumerate(shard_ranges(len(windows), num_shards)):
        name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(pathlib.Path(directory) / name)) as writer:
            for window in windows[start:stop]:
                feature = tf.train.Feature(int64_list=tf.train.Int64List(value=window.reshape(-1)))
                example = tf.train.Example(features=tf.train.Features(feature={"window": feature}))
                writer.write(example.SerializeToString())
        names.append(name)
    return names


def read_windows(files, batch_size, seq_len):
    """tf.data of `[batch_size, seq_len + 1]` int32 windows, read in file and record order."""
    feature = {"window": tf.io.FixedLenFeature([batch_size * (seq_len + 1)], tf.int64)}

    def parse(record):
        window = tf.io.parse_single_example(record, feature)["window"]
        return tf.reshape(tf.cast(window, tf.int32), [batch_size, seq_len + 1])

    # Files are read one after another: interleaving them would break the stream order memory relies on.
    dataset = tf.data.TFRecordDataset([str(f) for f in files])
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load_metadata(data_dir):
    path = pathlib.Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise DataError(f"{path}: no dataset metadata; build the dataset with ./create_tfrecords.sh first.")
    return reliability.read_json(path)


# The build settings that decide which id a text gets; batch_size, seq_len and shards only lay the ids out.
TOKENIZER_SETTINGS = ("source_sha256", "vocab_size", "lowercase", "model_type")


def check_data_matches_model(data_dir, record):
    """Raises DataError unless `data_dir` was tokenized like the data the model was trained on.

    `record` is the run's config.json (runs.config_record), which an export copies. Ids of another
    vocabulary index past the model's embeddings; another tokenizer of the same size scores a
    plausible but meaningless perplexity.
    """
    metadata = load_metadata(data_dir)
    trained_dir, vocab_size = record["data_dir"], record["model"]["vocab_size"]
    if metadata["vocab_size"] != vocab_size:
        raise DataError(f"{data_dir}: a vocabulary of {metadata['vocab_size']:,} ids, but the model was trained on "
                        f"{vocab_size:,} ({trained_dir}); use data built with the same settings.")
    trained, given = record["data"]["source"], metadata["settings"]
    differing = [key for key in TOKENIZER_SETTINGS if trained.get(key) != given.get(key)]
    if differing:
        raise DataError(f"{data_dir}: tokenized unlike the model's training data {trained_dir} (settings "
                        f"that differ: {', '.join(differing)}); use data built with the same settings.")


def make_dataset(data_dir, split):
    """(inputs [B, L], targets [B, L]) int32 batches of a split, in stream order, prefetched.

    Without tf.data's autotuning: parsing a batch takes well under a millisecond, so there is nothing
    to tune, and its optimisation thread, whose period grows to a minute, must finish before the
    iterator can be deleted. That held up the end of an epoch by 16 to 19 s on 2 busy cores.
    """
    metadata = load_metadata(data_dir)
    files = [pathlib.Path(data_dir) / name for name in metadata["splits"][split]["files"]]
    windows = read_windows(files, metadata["batch_size"], metadata["seq_len"])
    options = tf.data.Options()
    options.autotune.enabled = False
    return windows.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(tf.data.AUTOTUNE).with_options(options)


def write_stream_dataset(directory, stream, vocab_size, batch_size, seq_len):
    """TFRecords and metadata for one given token stream serving as every split (synthetic data)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    windows = context_batch(np.asarray(stream, np.int64), batch_size, seq_len)
    splits = {split: dict(files=write_tfrecords(windows, directory, split), batches=len(windows), words=len(stream))
              for split in SPLITS}
    metadata = dict(vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, splits=splits,
                    settings=dict(source="synthetic"))
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    return directory


# ---------------------------------------------------------------------------------------------
# A TFRecord damaged during a run.


class DamagedRecordError(reliability.RunError):
    """A TFRecord that no longer reads whole; the message names the file and the step."""


def batch_files(data_dir, split):
    """The file that holds each batch of a split, in order, as write_tfrecords laid them out."""
    metadata = load_metadata(data_dir)["splits"][split]
    ranges = shard_ranges(metadata["batches"], len(metadata["files"]))
    return [pathlib.Path(data_dir) / name for name, (start, stop) in zip(metadata["files"], ranges)
            for _ in range(start, stop)]


def tensorflow_reason(error):
    """TensorFlow's message without its function and op names: "truncated record at 1260"."""
    line = next(iter(error.message.splitlines()), "")
    return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", line).strip()


def batches_naming_damage(dataset, batch_files, first_batch, steps_done):
    """Yields the batches of `dataset`, a split read from batch `first_batch` on, for training steps
    steps_done + 1, steps_done + 2, ...

    A damaged or truncated TFRecord file raises DamagedRecordError naming the file and the step that
    would have read it; TensorFlow names neither. batch_files: the file of each batch of the split, in
    order (batch_files); a split that ends before its last batch is truncated too.
    """
    batches = iter(dataset)
    for batch, path in enumerate(batch_files[first_batch:], first_batch):
        try:
            yield next(batches)
        except StopIteration:
            reason = f"it ends after batch {batch} of {len(batch_files)}"
        except tf.errors.DataLossError as error:
            reason = f"batch {batch + 1} of {len(batch_files)} does not read: {tensorflow_reason(error)}"
        else:
            continue
        raise DamagedRecordError(f"{path}: damaged at training step {steps_done + batch - first_batch + 1} ({reason}); "
                                 f"rebuild the data with ./create_tfrecords.sh --overwrite. The checkpoints are intact.")
