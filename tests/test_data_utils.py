"""Context batching, sharded TFRecords and the tokenizer, each against a direct reference."""
import json

import numpy as np
import pytest
import tensorflow as tf

import data_utils


def naive_context_batch(stream, batch_size, seq_len):
    """Transformer-XL layout written from its definition, one window at a time."""
    row_len = len(stream) // batch_size
    rows = [stream[i * row_len : (i + 1) * row_len] for i in range(batch_size)]
    windows = []
    k = 0
    while (k + 1) * seq_len + 1 <= row_len:
        windows.append([row[k * seq_len : k * seq_len + seq_len + 1] for row in rows])
        k += 1
    return np.array(windows)


@pytest.mark.parametrize("num_tokens,batch_size,seq_len", [(1000, 4, 7), (999, 3, 5), (66, 2, 32), (5000, 32, 32)])
def test_context_batch_matches_definition(num_tokens, batch_size, seq_len):
    stream = np.random.default_rng(num_tokens).integers(0, 50, num_tokens)
    windows = data_utils.context_batch(stream, batch_size, seq_len)
    np.testing.assert_array_equal(windows, naive_context_batch(stream, batch_size, seq_len))
    assert windows.shape == (((num_tokens // batch_size) - 1) // seq_len, batch_size, seq_len + 1)


def test_each_row_continues_its_stream():
    stream = np.arange(10_000)  # Distinct tokens make every position identifiable.
    batch_size, seq_len = 8, 16
    windows = data_utils.context_batch(stream, batch_size, seq_len)
    inputs, targets = windows[:, :, :-1], windows[:, :, 1:]
    row_len = len(stream) // batch_size
    for i in range(batch_size):
        row_inputs = inputs[:, i].reshape(-1)
        np.testing.assert_array_equal(row_inputs, stream[i * row_len : i * row_len + len(row_inputs)])
        # Targets are the inputs shifted by one, across segment boundaries too.
        np.testing.assert_array_equal(targets[:, i].reshape(-1), stream[i * row_len + 1 : i * row_len + 1 + len(row_inputs)])
    # Every target is predicted once: no token appears twice among the targets.
    assert len(np.unique(targets)) == targets.size


@pytest.mark.parametrize("num_tokens,batch_size,seq_len", [(1000, 4, 7), (33, 4, 32), (5, 4, 2), (4096, 32, 32)])
def test_padded_batching_scores_every_token_but_each_rows_first(num_tokens, batch_size, seq_len):
    pad = -1
    stream = np.arange(num_tokens)
    windows = data_utils.context_batch(stream, batch_size, seq_len, pad_id=pad)
    targets = windows[:, :, 1:]
    scored = np.sort(targets[targets != pad])
    first_of_rows = windows[0, :, 0][windows[0, :, 0] != pad]
    np.testing.assert_array_equal(np.sort(np.concatenate([scored, first_of_rows])), stream)
    assert len(first_of_rows) <= batch_size


def test_too_short_stream_is_an_error_naming_the_numbers():
    with pytest.raises(data_utils.DataError, match=r"batch_size 4 x \(seq_len 8 \+ 1\) = 36"):
        data_utils.context_batch(np.arange(35), 4, 8)
    assert len(data_utils.context_batch(np.arange(36), 4, 8)) == 1


def test_windows_read_in_ranges_from_a_token_file_equal_the_whole_array(tmp_path):
    stream = np.random.default_rng(0).integers(1, 100, 1003).astype(np.int32)
    token_file = data_utils.TokenFile(tmp_path / "stream.int32")
    for piece in np.array_split(stream, 7):
        token_file.append(piece)
    assert len(token_file) == len(stream)
    np.testing.assert_array_equal(token_file[10:20], stream[10:20])
    for pad_id in (None, 0):
        whole = data_utils.context_batch(stream, 4, 9, pad_id)
        pieces = [data_utils.context_batch(token_file, 4, 9, pad_id, range(start, min(start + 5, len(whole))))
                  for start in range(0, len(whole), 5)]
        np.testing.assert_array_equal(np.concatenate(pieces), whole)
    rank = np.arange(100)[::-1].astype(np.int32)  # id x -> 99 - x
    token_file.rerank(rank, chunk=64)
    np.testing.assert_array_equal(token_file[:], 99 - stream)


@pytest.mark.parametrize("num_shards", [2, 3, 7])
def test_sharded_round_trip_equals_unsharded(tmp_path, num_shards):
    stream = np.random.default_rng(0).integers(1, 100, 4000)
    windows = data_utils.context_batch(stream, 4, 9, pad_id=0)

    def round_trip(shards, folder):
        folder.mkdir()
        written = data_utils.write_tfrecords(stream, folder, "valid", 4, 9, pad_id=0, num_shards=shards,
                                             tokens_per_write=100)  # A few windows at a time.
        assert len(written["files"]) == shards and written["batches"] == len(windows)
        assert written["predicted_tokens"] == len(stream) - 4  # All but each row's first.
        return np.stack(list(data_utils.read_windows([folder / f for f in written["files"]], 4, 9).as_numpy_iterator()))

    sharded = round_trip(num_shards, tmp_path / "sharded")
    np.testing.assert_array_equal(sharded, round_trip(1, tmp_path / "single"))
    np.testing.assert_array_equal(sharded, windows)


@pytest.mark.parametrize("num_tokens,batch_size,seq_len,shards", [(1000, 4, 7, 3), (33, 4, 32, 1), (5, 4, 2, 1),
                                                                    (577, 32, 8, 2)])
def test_a_padded_split_reads_back_as_its_whole_stream(tmp_path, num_tokens, batch_size, seq_len, shards):
    """Whatever the layout, uneven rows, empty rows and shards included, the stream comes back token for token."""
    stream = np.random.default_rng(num_tokens).integers(1, 100, num_tokens).astype(np.int32)
    written = data_utils.write_tfrecords(stream, tmp_path, "valid", batch_size, seq_len, data_utils.PAD_ID, shards)
    (tmp_path / "metadata.json").write_text(json.dumps(dict(batch_size=batch_size, seq_len=seq_len,
                                                            splits=dict(valid=dict(files=written["files"], batches=written["batches"])))))
    np.testing.assert_array_equal(data_utils.read_split_stream(tmp_path, "valid"), stream)


def test_training_batches_are_the_windows_split_into_inputs_and_targets_without_autotuning(tmp_path):
    stream = np.random.default_rng(0).integers(1, 100, 4 * (5 * 9 + 1))
    data_utils.write_stream_dataset(tmp_path, stream, 100, 4, 9)
    dataset = data_utils.make_dataset(tmp_path, "train")
    windows = naive_context_batch(stream, 4, 9)
    batches = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal([inputs for inputs, _ in batches], windows[:, :, :-1])
    np.testing.assert_array_equal([targets for _, targets in batches], windows[:, :, 1:])
    # Autotuning's thread held up each epoch's end (make_dataset's docstring).
    assert dataset.options().autotune.enabled is False


def test_shard_ranges_cover_every_batch_once_in_order():
    for num_batches in (1, 5, 17, 100):
        for num_shards in range(1, num_batches + 1):
            ranges = data_utils.shard_ranges(num_batches, num_shards)
            covered = np.concatenate([np.arange(a, b) for a, b in ranges])
            np.testing.assert_array_equal(covered, np.arange(num_batches))


def test_frequency_ranking_puts_reserved_first_then_descending_counts():
    counts = np.array([0, 0, 5, 9, 9, 1, 30])
    rank = data_utils.frequency_ranking(counts)
    assert sorted(rank) == list(range(len(counts)))
    assert rank[data_utils.PAD_ID] == 0 and rank[data_utils.EOL_ID] == 1
    ranked_counts = np.empty_like(counts)
    ranked_counts[rank] = counts
    assert list(ranked_counts[2:]) == sorted(counts[2:], reverse=True)
    assert rank[3] < rank[4]  # Ties keep SentencePiece's order.


def test_read_line_chunks_replaces_and_counts_invalid_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok line\nbad \xff\xfe byte\n\xc3\n")
    chunks = list(data_utils.read_line_chunks(data_utils.Span(path), lines_per_chunk=2))
    assert chunks == [(["ok line", "bad \ufffd\ufffd byte"], 2), (["\ufffd"], 1)]
    # A span from the second line's start to the third's reads the second line only.
    assert list(data_utils.read_lines(data_utils.Span(path, 8, 20))) == ["bad \ufffd\ufffd byte"]


def test_random_sample_takes_count_items_in_order_each_equally_likely():
    sample = list(data_utils.random_sample(range(100), 100, 30, seed=1))
    assert len(set(sample)) == 30 and sample == sorted(sample) and set(sample) <= set(range(100))
    assert sample == list(data_utils.random_sample(range(100), 100, 30, seed=1))  # Seeded: the same on every build.
    assert sample != list(data_utils.random_sample(range(100), 100, 30, seed=2))
    assert list(data_utils.random_sample(iter("abc"), 3, 3)) == ["a", "b", "c"]
    # Each of 10 items is drawn by about 3 in 10 of 2,000 seeds (4 standard deviations: 0.04).
    drawn = np.zeros(10)
    for seed in range(2000):
        drawn[list(data_utils.random_sample(range(10), 10, 3, seed))] += 1
    np.testing.assert_allclose(drawn / 2000, 0.3, atol=0.04)


def test_random_sample_of_a_periodic_sequence_does_not_alias():
    """40 evenly spaced items of 10 copies of 40 are the same 4 items ten times; a random 40 are about 26 of the 40."""
    periodic = [item for _ in range(10) for item in range(40)]
    assert len(set(periodic[9::10])) == 4
    assert len(set(data_utils.random_sample(periodic, 400, 40))) >= 20


def test_character_ranking_gives_line_breaks_the_end_of_line_id_and_ranks_the_rest():
    counts = np.zeros(256, np.int64)
    counts[[ord("a"), ord("b"), ord(" "), ord("\n")]] = [5, 9, 9, 1]
    id_of_byte = data_utils.character_ranking(b" abc\n", counts)
    # Reserved 0 and 1 (\n), then " " and b (9 each: byte order), a (5), c (absent from train); others -1.
    assert [id_of_byte[ord(c)] for c in "\n ba" + "c"] == [1, 2, 3, 4, 5]
    assert np.sum(id_of_byte >= 0) == 5 and id_of_byte[ord("z")] == -1
    # An alphabet without a line break keeps id 1 for end-of-line, unused: text8's 27 symbols take ids 2..28.
    text8 = data_utils.character_ranking(data_utils.TEXT8.alphabet, counts)
    assert sorted(text8[text8 >= 0]) == list(range(2, 29)) and text8[ord("\n")] == -1


def test_count_words_counts_one_end_of_line_per_line():
    assert data_utils.count_words([" = Title = ", " ", " a b c . "]) == 3 + 0 + 4 + 3


SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a <unk> walked into the bar and ordered 3 @,@ 000 drinks",
    "pack my box with five dozen liquor jugs",
    "how vexingly quick daft zebras jump",
    "sphinx of black quartz , judge my vow !",
]


@pytest.fixture(scope="module")
def tokenizer_and_rank(tmp_path_factory):
    rng = np.random.default_rng(0)
    lines = [SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 400)] + [""] * 20
    model = tmp_path_factory.mktemp("spm") / "spm.model"
    data_utils.train_sentencepiece(lines, model, vocab_size=60, lowercase=True)
    proto = model.read_bytes()
    pieces = data_utils.Tokenizer(proto, np.arange(60)).encode(tf.constant(lines)).flat_values.numpy()
    counts = np.bincount(pieces, minlength=60)
    rank = data_utils.frequency_ranking(counts)
    return data_utils.Tokenizer(proto, rank), lines, counts


def test_decode_inverts_encode_for_each_row_of_a_batch(tokenizer_and_rank):
    tokenizer, _, _ = tokenizer_and_rank
    text = SENTENCES + ["", "Mixed Case becomes lower"]
    ids = tokenizer.encode(tf.constant(text)).flat_values
    assert tokenizer.decode(tf.RaggedTensor.from_row_lengths(ids, [0, len(ids)])).numpy().tolist() == [
        b"", "".join(line.lower() + "\n" for line in text).encode()]
    # Rows that start with a line end, hold only line ends, or end within a line keep each of them.
    rows = [tokenizer.encode(tf.constant(lines)).flat_values.numpy().tolist()
            for lines in (["", "a cat"], [""], ["a cat"])]
    rows[2] = rows[2][:-1]
    assert tokenizer.decode(tf.ragged.constant(rows)).numpy().tolist() == [b"\na cat\n", b"\n", b"a cat"]


def test_wikitext_unk_is_one_piece_and_lines_end_with_end_of_line(tokenizer_and_rank):
    tokenizer, _, _ = tokenizer_and_rank
    encoded = tokenizer.encode(tf.constant(["<unk>", ""])).to_list()
    assert encoded[1] == [data_utils.EOL_ID]
    assert encoded[0][-1] == data_utils.EOL_ID
    pieces = [p for p in encoded[0][:-1] if tokenizer.decode(tf.ragged.constant([[p]])).numpy()[0] != b""]
    assert len(pieces) == 1 and tokenizer.decode(tf.ragged.constant([pieces])).numpy()[0] == b"<unk>"


def test_ranked_ids_have_non_increasing_training_frequency(tokenizer_and_rank):
    tokenizer, lines, _ = tokenizer_and_rank
    ids = tokenizer.encode(tf.constant(lines)).flat_values.numpy()
    counts = np.bincount(ids, minlength=tokenizer.vocab_size)
    assert counts[data_utils.PAD_ID] == 0
    assert np.all(np.diff(counts[2:]) <= 0)


def test_vocab_size_the_corpus_cannot_support_names_the_flag(tmp_path):
    with pytest.raises(data_utils.DataError, match="--vocab_size 5000"):
        data_utils.train_sentencepiece(SENTENCES, tmp_path / "spm.model", vocab_size=5000)
