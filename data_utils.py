"""Data library: the corpora (download and checks), tokenizers, context batching and TFRecords.

The token stream layout follows Transformer-XL. The N-token stream of a split is cut into
`batch_size` contiguous streams; batch k holds, for every row i,

    inputs  = stream_i[k*L : k*L + L]
    targets = stream_i[k*L + 1 : k*L + L + 1]

so row i of batch k+1 continues row i of batch k (segment memory depends on this) and every
token but the first of each stream is predicted exactly once. Each TFRecord example is one batch
stored as the window stream_i[k*L : k*L + L + 1] of every row, `[batch_size, seq_len + 1]`.

Ids seen by the model are ranked by training-set frequency (reserved ids first), because
adaptive softmax cutoffs assume frequent tokens have small ids. Id 0 is padding and id 1 ends a
line in every vocabulary. Word corpora (WikiText, your own text) are tokenized by SentencePiece,
every line, empty lines included, as its pieces followed by the end-of-line id: that matches
WikiText's own convention of one `<eos>` per line, so word-level perplexity uses the published
word counts. Character corpora (enwik8, text8) give each byte of their alphabet one id: a line
break is the end-of-line id and the others follow from id 2 by training frequency, so that a
split of C bytes is C tokens and bits per character is total NLL / (ln 2 x C).

Every pass over a corpus streams it: text is read, tokenized and written a chunk at a time, and a
split's token stream waits on disk between tokenizing and batching, so memory does not grow with
the corpus.
"""
import dataclasses
import hashlib
import io
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
from absl import logging

import reliability
from config import EOL_ID, METADATA_FILE, PAD_ID

SPLITS = ("train", "valid", "test")

# The default dataset, each of its defaults written only here (its folder and file names in config.py):
# build_data.py's flags and build_dataset, and bench.py's synthetic data use these.
DEFAULT_DATASET = "wikitext-2"
DEFAULT_VOCAB_SIZE = 12000  # SentencePiece pieces, reserved ids included (WikiText-2 and your own text).
DEFAULT_LOWERCASE = True  # As the reference run did.
DEFAULT_MODEL_TYPE = "unigram"  # SentencePiece's model type.
# SentencePiece trains on all train lines, or on this many of the non-empty ones drawn at random when there are more:
# WikiText-2 has 23,767. A sample of WikiText-like lines holds about WikiText-2's text, enough for 12k pieces, in
# about 25x its text of memory (0.3 GB), and the same on every build (TOKENIZER_SAMPLE_SEED).
DEFAULT_TOKENIZER_SENTENCES = 25_000
TOKENIZER_SAMPLE_SEED = 0
DEFAULT_BATCH_SIZE = 32  # Contiguous streams per batch: the global batch.
DEFAULT_SEQ_LEN = 32  # Tokens per segment.
DEFAULT_SHARDS = 1  # TFRecord files per split.

# The dataset author's mirror; it answers 403 to Python's default User-Agent.
BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
BLOCK_BYTES = 1 << 24  # Bytes read at a time from a character corpus or a download.
PROGRESS_BYTES = 100 << 20  # A progress line per this many bytes read or downloaded,
PROGRESS_TOKENS = 20_000_000  # and per this many tokens written.


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Where a published corpus comes from, how to check it, and how its files hold the three splits.

    A word corpus has one file per split, checked by its line and word counts. A character corpus is
    one file whose first `split_bytes` bytes are train, valid and test in turn, checked by its size.
    """

    url: str
    folder: str  # Folder under the data directory holding `files` once extracted; --corpus_dir holds the same.
    files: dict  # split -> file name in `folder` (and in the zip's `zip_folder`).
    zip_folder: str = None  # Folder of the files inside the zip, "" for its top level; None: `folder`.
    expected_counts: dict = None  # Word corpora: split -> (lines, words counting one end-of-line per line).
    vocab_size: int = DEFAULT_VOCAB_SIZE  # Word corpora: the default SentencePiece vocabulary.
    split_bytes: dict = None  # Character corpora: split -> bytes, in SPLITS order from the file's start.
    alphabet: bytes = None  # Character corpora: the bytes that may occur, one id each.
    archive_bytes: int = None  # The zip's published size, checked before it is opened; None: unchecked.
    archive_digest: tuple = None  # The zip's published (hashlib algorithm, hex digest); None: unchecked.


def wikitext(size, variant, counts, vocab_size, archive_bytes=None, archive_digest=None):
    """A WikiText corpus on the dataset author's mirror: `variant` "tokenized" (with <unk>) or "raw"."""
    name = f"wikitext-{size}" + ("-raw" if variant == "raw" else "")
    extension = "raw" if variant == "raw" else "tokens"
    return Corpus(url=f"https://wikitext.smerity.com/{name}-v1.zip", folder=name,
                  files={split: f"wiki.{split}.{extension}" for split in SPLITS}, expected_counts=counts,
                  vocab_size=vocab_size, archive_bytes=archive_bytes, archive_digest=archive_digest)


# Lines and words (one end-of-line per line) of each split, as published with the corpora (Merity et al. 2016).
WIKITEXT2_COUNTS = {"train": (36_718, 2_088_628), "valid": (3_760, 217_646), "test": (4_358, 245_569)}
WIKITEXT103_COUNTS = {"train": (1_801_350, 103_227_021), "valid": (3_760, 217_646), "test": (4_358, 245_569)}
# WikiText-2's zips are checked by their splits' counts only, as before; the others' sizes and digests are the ones
# published for the same files (Hugging Face datasets' dataset_infos.json; text8: its size from TensorFlow's word2vec
# tutorial and the SHA-1 of a public text8 loader).
WIKITEXT2 = {variant: wikitext(2, variant, WIKITEXT2_COUNTS, DEFAULT_VOCAB_SIZE) for variant in ("tokenized", "raw")}
WIKITEXT103 = {  # 32k pieces: about 2.5x WikiText-2's vocabulary per 50x its text, the usual size for 100M words.
    "tokenized": wikitext(103, "tokenized", WIKITEXT103_COUNTS, 32000, 190_229_076,
                          ("sha256", "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590")),
    "raw": wikitext(103, "raw", WIKITEXT103_COUNTS, 32000, 191_984_949,
                    ("sha256", "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794")),
}
CHARACTER_SPLIT_BYTES = {"train": 90_000_000, "valid": 5_000_000, "test": 5_000_000}  # As Transformer-XL and others cut them.
ENWIK8 = Corpus(url="http://mattmahoney.net/dc/enwik8.zip", folder="enwik8", zip_folder="",
                files=dict.fromkeys(SPLITS, "enwik8"), split_bytes=CHARACTER_SPLIT_BYTES, alphabet=bytes(range(256)),
                archive_bytes=36_445_475,
                archive_digest=("sha256", "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"))
TEXT8 = Corpus(url="http://mattmahoney.net/dc/text8.zip", folder="text8", zip_folder="",
               files=dict.fromkeys(SPLITS, "text8"), split_bytes=CHARACTER_SPLIT_BYTES,
               alphabet=b" abcdefghijklmnopqrstuvwxyz", archive_bytes=31_344_016,
               archive_digest=("sha1", "3de703932151f5a2c68fc41c5ccf5c76e7d6c366"))
DATASETS = {"wikitext-2": WIKITEXT2, "wikitext-103": WIKITEXT103, "enwik8": ENWIK8, "text8": TEXT8}  # WikiText: by variant.


def find_corpus(dataset, variant="tokenized"):
    """The Corpus of build_data.py's --dataset and --variant."""
    if dataset not in DATASETS:
        raise DataError(f"--dataset={dataset}: unknown; choose one of {', '.join(DATASETS)}.")
    if isinstance(DATASETS[dataset], Corpus):
        if variant != "tokenized":
            raise DataError(f"--variant={variant}: only WikiText has variants; {dataset} has one form.")
        return DATASETS[dataset]
    return DATASETS[dataset][variant]


class DataError(ValueError):
    """Bad input data or settings; the message names the file, flag or number at fault."""


def error_line(error):
    """The one line after `script.py: error:`: an OS error's path and reason, else the message's first line.

    TensorFlow and HDF5 put node names and other details on the lines below it.
    """
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return next(iter(str(error).splitlines()), type(error).__name__)


class Progress:
    """Logs `what` each time another `every` units of `total` are done, so that long work shows it moves."""

    def __init__(self, what, total, every, unit="MB", scale=1 << 20):
        self.what, self.total, self.every, self.unit, self.scale = what, total, every, unit, scale
        self.done, self.next_report = 0, every

    def advance(self, amount):
        self.done += amount
        if self.done >= self.next_report:
            while self.next_report <= self.done:
                self.next_report += self.every
            of_total = f" of {self.total / self.scale:,.0f}" if self.total else ""
            logging.info("%s: %s%s %s", self.what, f"{self.done / self.scale:,.0f}", of_total, self.unit)


# ---------------------------------------------------------------------------------------------
# Reading text and checking it.


def file_digest(path, algorithm="sha256"):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@dataclasses.dataclass(frozen=True)
class Span:
    """One split's text: bytes [start, stop) of a file, the whole file by default."""

    path: pathlib.Path
    start: int = 0
    stop: int = None  # None: the file's end.

    def size(self):
        return (self.stop if self.stop is not None else self.path.stat().st_size) - self.start


def read_blocks(span, block_bytes=BLOCK_BYTES):
    """The span's bytes, in blocks of at most block_bytes."""
    remaining = span.size()
    with open(span.path, "rb") as f:
        f.seek(span.start)
        while remaining > 0:
            block = f.read(min(block_bytes, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block


def read_line_chunks(span, lines_per_chunk=4096):
    """The span's lines in lists of at most lines_per_chunk, without their line ends, invalid UTF-8
    replaced by U+FFFD; yields (lines, number of invalid sequences replaced).

    Lines end at "\\n" only; the file's final line end closes its last line and opens no empty one.
    A span starts and stops at line starts.
    """
    stop = span.stop if span.stop is not None else float("inf")
    lines, replaced, position = [], 0, span.start
    with open(span.path, "rb") as f:
        f.seek(span.start)
        for raw in f:
            if position >= stop:
                break
            position += len(raw)
            line = raw.removesuffix(b"\n").decode("utf-8", errors="replace")
            replaced += line.count("\ufffd") - raw.count("\ufffd".encode())  # Each invalid sequence becomes one U+FFFD.
            lines.append(line)
            if len(lines) == lines_per_chunk:
                yield lines, replaced
                lines, replaced = [], 0
    if lines:
        yield lines, replaced


def read_lines(span):
    """The span's lines, one at a time (read_line_chunks' replacements)."""
    return (line for lines, _ in read_line_chunks(span) for line in lines)


def count_words(lines):
    """Whitespace-separated words plus one end-of-line per line: WikiText's published token count."""
    return sum(len(line.split()) for line in lines) + len(lines)


def is_blank(line):
    """WikiText's empty lines hold a space: such a line is a lone end-of-line, with no text to train a tokenizer."""
    return not line.strip()


def scan_lines(span):
    """dict(lines, words, non_empty_lines: those not blank, replaced: invalid UTF-8 sequences) of a span."""
    counts = dict(lines=0, words=0, non_empty_lines=0, replaced=0)
    progress = Progress(f"Read {span.path.name}", span.size(), PROGRESS_BYTES)
    for lines, replaced in read_line_chunks(span):
        counts["lines"] += len(lines)
        counts["words"] += count_words(lines)
        counts["replaced"] += replaced
        counts["non_empty_lines"] += sum(not is_blank(line) for line in lines)
        progress.advance(sum(len(line) for line in lines))
    return counts


def check_counts(path, actual, expected):
    """Raises DataError unless the (line, word) counts `actual` are the `expected` ones."""
    if tuple(actual) != tuple(expected):
        raise DataError(
            f"{path}: {actual[0]:,} lines and {actual[1]:,} words, expected {expected[0]:,} lines "
            f"and {expected[1]:,} words; the file is truncated or corrupted."
        )


def byte_counts(span):
    """How often each of the 256 byte values occurs in the span: [256] int64."""
    counts = np.zeros(256, np.int64)
    progress = Progress(f"Read {span.path.name}", span.size(), PROGRESS_BYTES)
    for block in read_blocks(span):
        counts += np.bincount(np.frombuffer(block, np.uint8), minlength=256)
        progress.advance(len(block))
    return counts


def check_alphabet(span, counts, alphabet, split):
    """Raises DataError, naming the file and a stray byte, if the span's byte `counts` fall outside `alphabet`."""
    stray = np.setdiff1d(np.flatnonzero(counts), np.frombuffer(alphabet, np.uint8))
    if len(stray):
        raise DataError(f"{span.path}: the {split} split holds {int(counts[stray].sum()):,} bytes outside the corpus' "
                        f"{len(alphabet)}-symbol alphabet (such as 0x{stray[0]:02x}); it is not this corpus.")


# ---------------------------------------------------------------------------------------------
# Getting a corpus.


def download(url, destination, retries=3, backoff_seconds=2.0, timeout=60):
    """Downloads `url` to `destination` with a browser User-Agent, retrying; never leaves a partial file."""
    destination = pathlib.Path(destination)
    partial = destination.with_name(destination.name + ".partial")
    request = urllib.request.Request(url, headers={"User-Agent": BROWSER_USER_AGENT})
    last_error = None
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
                progress = Progress(f"Downloaded {destination.name}", int(response.headers.get("Content-Length") or 0),
                                    PROGRESS_BYTES)
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress.advance(len(block))
            os.replace(partial, destination)
            return destination
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            partial.unlink(missing_ok=True)
            if attempt < retries:
                time.sleep(backoff_seconds * attempt)
    raise DataError(
        f"Could not download {url} after {retries} attempts ({last_error}). Download it by hand into "
        f"{destination.parent}/, or unzip it and pass the folder of its files with --corpus_dir."
    )


def check_archive(zip_path, corpus):
    """Raises DataError unless the zip has the corpus' published size and digest (where published)."""
    size = pathlib.Path(zip_path).stat().st_size
    if corpus.archive_bytes is not None and size != corpus.archive_bytes:
        raise DataError(f"{size:,} bytes, expected the published {corpus.archive_bytes:,}.")
    if corpus.archive_digest is not None:
        algorithm, expected = corpus.archive_digest
        actual = file_digest(zip_path, algorithm)
        if actual != expected:
            raise DataError(f"{algorithm} {actual}, expected the published {expected}.")


def corpus_spans(corpus, folder):
    """{split: Span} of a corpus' files in `folder`, a character corpus' file cut into its split sizes."""
    folder = pathlib.Path(folder)
    for name in dict.fromkeys(corpus.files.values()):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: no such file; {corpus.folder} needs {', '.join(dict.fromkeys(corpus.files.values()))} "
                            f"in {folder}.")
    if corpus.split_bytes is None:
        return {split: Span(folder / name) for split, name in corpus.files.items()}
    path = folder / corpus.files["train"]
    size, expected = path.stat().st_size, sum(corpus.split_bytes.values())
    if size != expected:
        raise DataError(f"{path}: {size:,} bytes, expected {expected:,} (train, valid and test "
                        f"{', '.join(f'{n:,}' for n in corpus.split_bytes.values())}); the file is truncated or corrupted.")
    bounds = np.cumsum([0] + [corpus.split_bytes[split] for split in SPLITS]).tolist()
    return {split: Span(path, start, stop) for split, start, stop in zip(SPLITS, bounds, bounds[1:])}


def check_corpus(corpus, spans):
    """Raises DataError unless a word corpus' splits have the published counts (a character corpus' sizes
    are checked by corpus_spans)."""
    if corpus.expected_counts:
        for split, span in spans.items():
            counts = scan_lines(span)
            check_counts(span.path, (counts["lines"], counts["words"]), corpus.expected_counts[split])


def extract_corpus(zip_path, corpus, data_dir):
    """Extracts the corpus' files from `zip_path` into `data_dir/corpus.folder`, checks them, returns the folder.

    A zip of the wrong size or digest, one that is not a zip or lacks a file, or whose splits have the
    wrong counts or size is deleted, together with anything extracted from it.
    """
    target = pathlib.Path(data_dir) / corpus.folder
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        check_archive(zip_path, corpus)
        with zipfile.ZipFile(zip_path) as archive:
            for name in dict.fromkeys(corpus.files.values()):
                zip_folder = corpus.folder if corpus.zip_folder is None else corpus.zip_folder
                member = f"{zip_folder}/{name}" if zip_folder else name
                try:
                    with archive.open(member) as source, open(staging / name, "wb") as out:
                        shutil.copyfileobj(source, out, length=BLOCK_BYTES)
                except KeyError:
                    raise DataError(f"has no {member}; it is not the {corpus.folder} archive.") from None
        check_corpus(corpus, corpus_spans(corpus, staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return target
    except (zipfile.BadZipFile, DataError) as error:
        pathlib.Path(zip_path).unlink(missing_ok=True)
        raise DataError(f"Rejected download {zip_path} (deleted): {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def locate_corpus(corpus, data_dir, local_dir=None):
    """The folder holding the corpus' files: `local_dir` if given, else `data_dir/folder`, else the zip
    extracted, from `data_dir` if one was put there by hand, else downloaded."""
    if local_dir:
        folder = pathlib.Path(local_dir)
        if not folder.is_dir():
            raise DataError(f"--corpus_dir {folder}: no such directory.")
        return folder
    folder = pathlib.Path(data_dir) / corpus.folder
    if all((folder / name).is_file() for name in corpus.files.values()):
        return folder
    pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
    zip_path = pathlib.Path(data_dir) / pathlib.PurePosixPath(corpus.url).name
    if zip_path.is_file():
        logging.info("Extracting %s", zip_path)
    else:
        logging.info("Downloading %s to %s", corpus.url, zip_path)
        download(corpus.url, zip_path)
    folder = extract_corpus(zip_path, corpus, data_dir)
    zip_path.unlink()
    return folder


def find_split_files(path):
    """The `--input_text` corpus: {split: Span}, from a directory with one train, valid and test file,
    or one file cut by lines into train (90%), valid (5%) and test (5%)."""
    path = pathlib.Path(path)
    if path.is_file():
        return cut_splits(path)
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
        files[split] = Span(matches[0])
    return files


def cut_splits(path):
    """One file's lines cut into contiguous train (90%), valid (5%) and test (5%) Spans, reading it twice."""
    with open(path, "rb") as f:
        num_lines = sum(1 for _ in f)
    if num_lines < 3:
        raise DataError(f"--input_text {path}: {num_lines} lines; need at least 3 to cut train/valid/test.")
    held_out = max(1, num_lines // 20)
    first_lines = (num_lines - 2 * held_out, num_lines - held_out)  # Of valid and of test.
    starts, position = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            if number in first_lines:
                starts.append(position)
            position += len(line)
    return {"train": Span(path, 0, starts[0]), "valid": Span(path, starts[0], starts[1]),
            "test": Span(path, starts[1], position)}


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def random_sample(items, num_items, count, seed=TOKENIZER_SAMPLE_SEED):
    """`count` of an iterable's `num_items` items, drawn at random without replacement (each as likely as any
    other, the same for the same seed) and yielded in their order, streaming.

    Not evenly spaced: a corpus with a period, such as copies of one text, would alias with the stride,
    giving the same few lines from every period.
    """
    drawn = iter(np.sort(np.random.default_rng(seed).choice(num_items, count, replace=False)).tolist())
    wanted = next(drawn, None)
    for number, item in enumerate(items):
        if wanted is None:
            return  # The items after the last one drawn need not be read.
        if number == wanted:
            yield item
            wanted = next(drawn, None)


def train_sentencepiece(lines, model_path, vocab_size, lowercase=DEFAULT_LOWERCASE, model_type=DEFAULT_MODEL_TYPE):
    """Trains SentencePiece on an iterable of training lines; reserves pad, end-of-line and keeps `<unk>` one piece.

    It holds about 25x the lines' text in memory: give a large corpus as a sample (random_sample).
    Ids here are SentencePiece's own; `frequency_ranking` then reorders them. Python writes the model file:
    SentencePiece's own write leaves it empty on a full disk, and says nothing.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
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
        reason = re.sub(r"^.*\] ", "", str(error))  # Without its source file, line and failed check.
        raise DataError(f"--vocab_size {vocab_size}: SentencePiece cannot train it on this text ({reason}).") from None
    pathlib.Path(model_path).write_bytes(model.getvalue())


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


class Tokenizer(tf.Module):
    """SentencePiece applied in the TF graph, with ids ranked by training frequency. A tf.Module, so that a
    SavedModel holds it with the model (the export).

    `encode` maps lines to model ids (each line followed by the end-of-line id); `decode` maps rows of ids back to text.
    """

    def __init__(self, model_proto, rank):
        super().__init__()
        # Imported here, not with the module: it holds 130 MB, which training SentencePiece (build_data.py's peak)
        # and a character corpus do without.
        import tensorflow_text as tf_text

        self._sentencepiece = tf_text.SentencepieceTokenizer(model=model_proto, out_type=tf.int32)
        self._to_model_id = tf.constant(rank, tf.int32)
        self._to_sentencepiece_id = tf.constant(np.argsort(rank), tf.int32)
        self.vocab_size = len(rank)

    def encode_sentencepiece(self, lines):
        """[N] strings -> ragged [N, (pieces + 1)] SentencePiece ids, each row ending with end-of-line."""
        pieces = self._sentencepiece.tokenize(lines)
        end_of_line = tf.fill([tf.shape(lines)[0], 1], tf.constant(EOL_ID, tf.int32))
        return tf.concat([pieces, tf.RaggedTensor.from_tensor(end_of_line)], axis=1)

    def encode(self, lines):
        """[N] strings -> ragged [N, (pieces + 1)] model ids."""
        return tf.ragged.map_flat_values(lambda ids: tf.gather(self._to_model_id, ids), self.encode_sentencepiece(lines))

    def decode(self, ids):
        """Model ids, ragged [B, (T)] -> [B] strings in which every end-of-line id becomes a line break.

        Each row is cut into lines after each end-of-line id (a control piece, so not printed), the ids
        after the last one a line too, and SentencePiece detokenizes the lines of all rows at once.
        """
        ids = tf.ragged.map_flat_values(lambda model_ids: tf.gather(self._to_sentencepiece_id, model_ids), ids)
        ends = tf.cast(tf.equal(ids, EOL_ID), tf.int32)  # [B, (T)]
        lines_per_row = tf.reduce_sum(ends, axis=1) + 1  # [B]
        # A row's lines follow those of the rows before it, each of which has one more line than line ends.
        line = tf.cumsum(ends.flat_values, exclusive=True) + tf.cast(ids.value_rowids(), tf.int32)
        lines = tf.RaggedTensor.from_value_rowids(ids.flat_values, line, nrows=tf.reduce_sum(lines_per_row))
        line_breaks = tf.where(tf.reduce_any(tf.equal(lines, EOL_ID), axis=1), "\n", "")
        text_lines = self._sentencepiece.detokenize(lines) + line_breaks
        # Joined without a separator: a ragged reduce_join with one drops a row's leading empty lines.
        return tf.strings.reduce_join(tf.RaggedTensor.from_row_lengths(text_lines, lines_per_row), axis=1)


class CharacterTokenizer(tf.Module):
    """A character dataset's bytes <-> ids (character_ranking) in the TF graph, with Tokenizer's encode and decode."""

    def __init__(self, id_of_byte):
        super().__init__()
        id_of_byte = np.asarray(id_of_byte, np.int32)
        byte_of_id = np.zeros(id_of_byte.max() + 1, np.uint8)
        known = np.flatnonzero(id_of_byte >= 0)
        byte_of_id[id_of_byte[known]] = known
        byte_of_id[EOL_ID] = ord("\n")
        self._id_of_byte = tf.constant(id_of_byte)
        self._text_of_id = tf.constant([b"" if i == PAD_ID else bytes([byte]) for i, byte in enumerate(byte_of_id)])
        self.vocab_size = len(byte_of_id)

    def encode(self, lines):
        """[N] strings -> ragged [N, (bytes + 1)] ids. A byte outside the dataset's alphabet is a DataError
        naming it when run eagerly, an InvalidArgumentError in a graph (the export)."""
        byte_values = tf.ragged.map_flat_values(lambda one_byte: tf.reshape(tf.io.decode_raw(one_byte, tf.uint8), [-1]),
                                                tf.strings.bytes_split(lines))
        ids = tf.ragged.map_flat_values(lambda values: tf.gather(self._id_of_byte, tf.cast(values, tf.int32)),
                                        byte_values)
        if tf.executing_eagerly():
            for line, stray in zip(lines.numpy(), tf.ragged.boolean_mask(byte_values, ids < 0).to_list()):
                if stray:
                    raise DataError(f"{line.decode(errors='replace')!r}: bytes outside the dataset's alphabet "
                                    f"({', '.join(f'0x{byte:02x}' for byte in sorted(set(stray)))}).")
        tf.debugging.Assert(tf.reduce_all(ids.flat_values >= 0), ["bytes outside the alphabet of the dataset"])
        end_of_line = tf.fill([tf.shape(lines)[0], 1], tf.constant(EOL_ID, tf.int32))
        return tf.concat([ids, tf.RaggedTensor.from_tensor(end_of_line)], axis=1)

    def decode(self, ids):
        """Ids, ragged [B, (T)] -> [B] strings of their bytes, end-of-line as a line break (padding as nothing)."""
        return tf.strings.reduce_join(tf.gather(self._text_of_id, ids), axis=-1)


def load_tokenizer(data_dir):
    """The tokenizer of the dataset (or export) in data_dir: SentencePiece's, or a character dataset's byte map.
    A DataError names a dataset without one (synthetic) or a SentencePiece model that does not read."""
    metadata = load_metadata(data_dir)
    if "tokenizer" not in metadata:
        raise DataError(f"{pathlib.Path(data_dir) / METADATA_FILE}: no tokenizer; synthetic ids stand for no text.")
    tokenizer = metadata["tokenizer"]
    if "id_of_byte" in tokenizer:
        return CharacterTokenizer(tokenizer["id_of_byte"])
    path = pathlib.Path(data_dir) / tokenizer["model_file"]
    proto = path.read_bytes()
    try:  # Checked here by the sentencepiece package: TensorFlow's op fails at its first use, naming no file.
        spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError:
        raise DataError(f"{path}: not a SentencePiece model; the file is truncated or damaged.") from None
    return Tokenizer(proto, tokenizer["id_rank"])


def character_ranking(alphabet, train_counts):
    """id_of_byte [256] of a character corpus: a line break is EOL_ID, the alphabet's other bytes take ids
    from 2 on by descending count in `train_counts` ([256] per byte; ties in byte order), others -1.

    The vocabulary is 2 + the alphabet's bytes other than a line break; EOL_ID is reserved even when
    the alphabet has no line break, so that id 1 ends a line in every vocabulary.
    """
    symbols = np.setdiff1d(np.frombuffer(alphabet, np.uint8), [ord("\n")])  # Sorted by byte value.
    line_breaks = int(train_counts[ord("\n")])
    rank = frequency_ranking(np.concatenate([[0, line_breaks], np.asarray(train_counts)[symbols]]))
    id_of_byte = np.full(256, -1, np.int32)
    id_of_byte[symbols] = rank[2:]
    if ord("\n") in alphabet:
        id_of_byte[ord("\n")] = EOL_ID
    return id_of_byte


class TokenFile:
    """A split's token stream on disk, flat int32: appended a chunk at a time, read back by slices
    (`len` and `[start:stop]`, all that context_batch reads) without holding or mapping it whole."""

    dtype = np.dtype(np.int32)

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.path.write_bytes(b"")

    def append(self, ids):
        with open(self.path, "ab") as f:
            f.write(np.asarray(ids, self.dtype).tobytes())  # Not tofile, whose short write says neither why nor where.

    def __len__(self):
        return self.path.stat().st_size // self.dtype.itemsize

    def __getitem__(self, index):
        start, stop, _ = index.indices(len(self))
        return np.fromfile(self.path, self.dtype, count=max(0, stop - start), offset=start * self.dtype.itemsize)

    def rerank(self, rank, chunk=1 << 20):
        """Replaces every id x by rank[x], in place, a chunk at a time."""
        with open(self.path, "r+b") as f:
            for start in range(0, len(self), chunk):
                f.seek(start * self.dtype.itemsize)
                ids = np.fromfile(f, self.dtype, count=chunk)
                f.seek(start * self.dtype.itemsize)
                f.write(rank[ids].astype(self.dtype).tobytes())


def encode_lines_to_file(encode_fn, line_chunks, token_file, vocab_size, what="text"):
    """Encodes chunks of lines (lists of str) through a tf.data pipeline, appending each chunk's ids to
    token_file; returns how often each id occurred, [vocab_size] int64."""
    dataset = tf.data.Dataset.from_generator(lambda: (lines for lines, _ in line_chunks),
                                             output_signature=tf.TensorSpec([None], tf.string))
    dataset = dataset.map(lambda batch: encode_fn(batch).flat_values).prefetch(tf.data.AUTOTUNE)
    counts = np.zeros(vocab_size, np.int64)
    progress = Progress(f"Tokenized {what}", None, PROGRESS_TOKENS, unit="M tokens", scale=1e6)
    for ids in dataset.as_numpy_iterator():
        token_file.append(ids)
        counts += np.bincount(ids, minlength=vocab_size)
        progress.advance(len(ids))
    return counts


def encode_bytes_to_file(id_of_byte, span, token_file):
    """Maps each byte of the span to its id (character_ranking), appending them to token_file a block at a time."""
    for block in read_blocks(span):
        token_file.append(id_of_byte[np.frombuffer(block, np.uint8)])


# ---------------------------------------------------------------------------------------------
# Context batching and TFRecords.


def context_layout(num_tokens, batch_size, seq_len, padded):
    """(row_len, num_batches) of a stream of num_tokens cut into batch_size rows, Transformer-XL style.

    Unpadded, each row holds num_tokens // batch_size tokens and its final partial segment is
    dropped; padded, each row holds ceil(num_tokens / batch_size) (the last ones padded) and the last
    segment is padded so that every token lands in a window.
    """
    if padded:
        row_len = -(-num_tokens // batch_size)
        num_batches = -(-(row_len - 1) // seq_len)
    else:
        row_len = num_tokens // batch_size
        num_batches = (row_len - 1) // seq_len
    if num_batches < 1:
        raise DataError(
            f"{num_tokens:,} tokens are too few for batch_size {batch_size} x (seq_len {seq_len} + 1) = "
            f"{batch_size * (seq_len + 1):,}; lower --batch_size or --seq_len."
        )
    return row_len, num_batches


def context_batch(stream, batch_size, seq_len, pad_id=None, batches=None):
    """Cuts a token stream into `[num_batches, batch_size, seq_len + 1]` windows, Transformer-XL style.

    Row i of window k is stream_i[k*L : k*L + L + 1], where stream_i is the i-th of `batch_size`
    contiguous pieces of the stream (context_layout); consecutive windows of a row share exactly one
    token. With `pad_id=None` the final partial segment (and the last len(stream) % batch_size tokens)
    is dropped; otherwise each row is padded at its end so that every token lands in a window.
    `batches` (a range) returns only those windows. The stream is an array or anything with a dtype,
    `len` and `[start:stop]` slices (TokenFile): each row's tokens are read as one slice.
    """
    row_len, num_batches = context_layout(len(stream), batch_size, seq_len, padded=pad_id is not None)
    batches = batches or range(num_batches)
    covered = len(batches) * seq_len + 1  # Tokens of each row that these windows hold.
    rows = np.full([batch_size, covered], pad_id or 0, stream.dtype)
    for i in range(batch_size):
        start = i * row_len + batches.start * seq_len
        stop = max(start, min(start + covered, (i + 1) * row_len, len(stream)))  # Padded rows end early.
        rows[i, : stop - start] = stream[start:stop]
    windows = rows[:, np.arange(len(batches))[:, None] * seq_len + np.arange(seq_len + 1)]  # [B, n, L + 1]
    return np.ascontiguousarray(windows.transpose(1, 0, 2))


def shard_ranges(num_batches, num_shards):
    """Contiguous [start, stop) batch ranges, as even as possible, covering every batch once in order."""
    bounds = np.linspace(0, num_batches, num_shards + 1).round().astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def write_tfrecords(stream, directory, split, batch_size, seq_len, pad_id=None, num_shards=DEFAULT_SHARDS,
                    tokens_per_write=1 << 20):
    """Context-batches a token stream (context_batch) into `num_shards` files of one example per batch
    window, in order, cutting about tokens_per_write tokens of windows at a time.

    Returns dict(files: their names, batches, predicted_tokens: targets that are not padding).
    """
    _, num_batches = context_layout(len(stream), batch_size, seq_len, padded=pad_id is not None)
    num_shards = max(1, min(num_shards, num_batches))
    batches_per_write = max(1, tokens_per_write // (batch_size * (seq_len + 1)))
    progress = Progress(f"Wrote {split}", num_batches * batch_size * seq_len, PROGRESS_TOKENS, unit="M tokens", scale=1e6)
    names, predicted = [], 0
    for shard, (start, stop) in enumerate(shard_ranges(num_batches, num_shards)):
        name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(pathlib.Path(directory) / name)) as writer:
            for first in range(start, stop, batches_per_write):
                windows = context_batch(stream, batch_size, seq_len, pad_id, range(first, min(first + batches_per_write, stop)))
                predicted += int(np.sum(windows[:, :, 1:] != PAD_ID))
                for window in windows:
                    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=window.reshape(-1)))
                    example = tf.train.Example(features=tf.train.Features(feature={"window": feature}))
                    writer.write(example.SerializeToString())
                progress.advance(len(windows) * batch_size * seq_len)
        names.append(name)
    return dict(files=names, batches=num_batches, predicted_tokens=predicted)


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
# A setting that a build did not record (tokenizer_sample when all train lines trained, alphabet for a word
# corpus) compares equal to its absence; tokenizer_sentences is that of builds that sampled evenly spaced lines.
TOKENIZER_SETTINGS = ("source_sha256", "vocab_size", "lowercase", "model_type", "tokenizer_sample",
                      "tokenizer_sentences", "alphabet")


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
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such file, which the {split} split of {METADATA_FILE} lists; rebuild the "
                            f"data with ./create_tfrecords.sh --overwrite.")
    windows = read_windows(files, metadata["batch_size"], metadata["seq_len"])
    options = tf.data.Options()
    options.autotune.enabled = False
    return windows.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(tf.data.AUTOTUNE).with_options(options)


def split_batches(data_dir, split):
    """make_dataset's batches of a split, read through batches_naming_damage: a missing, damaged or truncated
    file is named in a DataError or DamagedRecordError, where TensorFlow names none."""
    return batches_naming_damage(make_dataset(data_dir, split), batch_files(data_dir, split))


def read_split_stream(data_dir, split):
    """A split's token stream read back from its TFRecords: each row's windows joined (consecutive ones
    share a token), the rows in order, padding dropped. Of valid and test, which the build pads, this is
    the whole stream it tokenized; of an unpadded split, the tokens its windows hold."""
    batch_size = load_metadata(data_dir)["batch_size"]
    batches = split_batches(data_dir, split)
    windows = np.stack([np.concatenate([inputs, targets[:, -1:]], axis=1) for inputs, targets in batches])  # [n, B, L + 1]
    rows = np.concatenate([windows[:, :, :-1].transpose(1, 0, 2).reshape(batch_size, -1), windows[-1, :, -1:]],
                          axis=1)  # [B, n*L + 1]
    return rows[rows != PAD_ID]


def context_batched_dataset(stream, batch_size, seq_len):
    """(inputs [B, L], targets [B, L]) batches of a token stream context-batched anew (context_batch,
    padded), in stream order: every token but the first of each of the B rows is a target once."""
    windows = context_batch(stream, batch_size, seq_len, pad_id=PAD_ID)
    return tf.data.Dataset.from_tensor_slices((windows[:, :, :-1], windows[:, :, 1:]))


def write_stream_dataset(directory, stream, vocab_size, batch_size, seq_len):
    """TFRecords and metadata for one given token stream serving as every split (synthetic data)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stream = np.asarray(stream, np.int64)
    splits = {}
    for split in SPLITS:
        written = write_tfrecords(stream, directory, split, batch_size, seq_len)
        splits[split] = dict(files=written["files"], batches=written["batches"], words=len(stream))
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


def batches_naming_damage(dataset, batch_files, first_batch=0, steps_done=None):
    """Yields the batches of `dataset`, a split read from batch `first_batch` on, in training for steps
    steps_done + 1, steps_done + 2, ...

    A damaged or truncated TFRecord file raises DamagedRecordError naming the file and, in training, the
    step that would have read it; TensorFlow names neither. batch_files: the file of each batch of the
    split, in order (batch_files); a split that ends before its last batch is truncated too.
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
        if steps_done is None:
            raise DamagedRecordError(f"{path}: damaged ({reason}); rebuild the data with ./create_tfrecords.sh "
                                     f"--overwrite.")
        raise DamagedRecordError(f"{path}: damaged at training step {steps_done + batch - first_batch + 1} ({reason}); "
                                 f"rebuild the data with ./create_tfrecords.sh --overwrite. The checkpoints are intact.")
