"""configs/: each preset's flags exist in train.py (and its data's in build_data.py) and take valid values, the
training file reads the directory its data file builds, its --batch_chunk splits the batch, and its model builds
and runs; Transformer-XL's base presets have the sizes that docs/datasets.md gives."""
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import config
import data_utils
import devices
from conftest import REPO_ROOT
from model import TransformerXL, count_parameters

PRESETS = sorted(path for path in (REPO_ROOT / "configs").glob("*.flags") if not path.name.endswith(".data.flags"))
DOCUMENTED_PARAMETERS = {"wt103_base": 67.7e6, "enwik8_base": 41.2e6}  # docs/datasets.md, in millions to 0.1.


def read_flag_file(flag_values, path):
    """The flags after reading `path` as absl does; an unknown flag or a bad value raises."""
    flag_values(["script", f"--flagfile={path}"])
    return flag_values


def build_data_flags():
    """build_data.py's flags at their defaults, in a FlagValues of their own."""
    import build_data

    return build_data.define_flags(flags.FlagValues())


def vocab_size(data):
    """The vocabulary that build_data.py builds for these flags: a word corpus' SentencePiece size, or a
    character corpus' alphabet (data_utils.character_ranking)."""
    corpus = data_utils.find_corpus(data.dataset, data.variant)
    if corpus.alphabet is None:
        return data.vocab_size or corpus.vocab_size
    return int(data_utils.character_ranking(corpus.alphabet, np.ones(256, np.int64)).max()) + 1


def test_every_preset_has_its_data_flags():
    assert [path.stem for path in PRESETS] == ["enwik8_base", "text8_base", "wt103_base", "wt2_t128"]
    for path in PRESETS:
        assert path.with_suffix(".data.flags").is_file(), path


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_a_preset_takes_valid_flags_and_builds_its_model(preset):
    data = read_flag_file(build_data_flags(), preset.with_suffix(".data.flags"))
    train = read_flag_file(config.define_flags(flags.FlagValues()), preset)
    assert train.data_dir == data.output_dir  # train.py reads what the data preset builds.
    model_config, _, options = config.configs_from_flags(train, vocab_size(data))  # Each dataclass checks its values.
    assert devices.rows_per_replica(data.batch_size, 1, options.batch_chunk)  # --batch_chunk divides one GPU's rows.
    model = TransformerXL(model_config)
    tokens = tf.ones([1, 8], tf.int32)
    nll, _ = model.token_nll(tokens, tokens, model.initial_memory(1))
    assert nll.shape == (1, 8) and np.isfinite(nll.numpy()).all()
    if preset.stem in DOCUMENTED_PARAMETERS:
        assert round(count_parameters(model)["total"], -5) == DOCUMENTED_PARAMETERS[preset.stem]
