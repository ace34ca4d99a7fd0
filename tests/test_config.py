"""config.py: every setting refused by name when bad, the flags made from the dataclasses, and the architecture string."""
import dataclasses
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from config import (CANDIDATE_NAMES, CANDIDATES, CHOICES, SUPERNET_ONLY, ModelConfig, RunOptions, TrainConfig,
                    configs_from_flags, define_flags, define_verbose_flag, derived_architecture, field_comments,
                    par_architecture)
from conftest import REPO_ROOT

TINY = dict(vocab_size=50, cutoffs=(20, 35))


@pytest.mark.parametrize("settings, fragment", [
    (dict(epochs=0), "--epochs=0"), (dict(tau_start=0.0), "--tau_start=0.0"), (dict(max_lr=-1.0), "--max_lr"),
    (dict(jit_compile="yes"), "--jit_compile='yes'"), (dict(precision="int8"), "--precision='int8'"),
    (dict(warmup_steps=-1), "--warmup_steps=-1")])
def test_train_config_refuses_bad_settings_naming_the_flag(settings, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[")):
        TrainConfig(**settings)


@pytest.mark.parametrize("settings", [dict(log_every=0), dict(checkpoint_every=0), dict(strategy="gpu"),
                                      dict(intra_op_threads=-1), dict(eval_batches=-2), dict(batch_chunk=0)])
def test_run_options_refuse_bad_settings_naming_the_flag(settings):
    with pytest.raises(ValueError, match=f"--{next(iter(settings))}="):
        RunOptions(**settings)


def test_help_explains_every_flag_in_words():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    for settings_class in (ModelConfig, TrainConfig, RunOptions):
        for field in dataclasses.fields(settings_class):
            if field.name == "vocab_size":  # The dataset's, not a flag.
                continue
            help_text = re.search(rf"--(\[no\])?{field.name}: (.+?)(?=\n\s+--|\Z)", result.stdout, re.S)
            assert help_text and len(help_text.group(2).split()) >= 3, field.name
            for choice in CHOICES.get(field.name, ()):  # A field that takes a name says which it takes.
                assert re.search(rf"\b{choice}\b", help_text.group(2)), (field.name, choice)


def test_flags_are_generated_from_the_dataclasses_with_their_defaults():
    from absl import flags

    flag_values = define_flags(flags.FlagValues())
    flag_values(["train.py"])
    model, config, options = configs_from_flags(flag_values, vocab_size=12000)
    assert (model, config, options) == (ModelConfig(vocab_size=12000), TrainConfig(), RunOptions())
    assert model.cutoffs == (250, 2500) and model.architecture is None and model.d_head is None
    flag_values(["train.py", "--cutoffs=20,100", "--proj_dims=8,4", "--architecture=ADI", "--d_head=8", "--pre_norm",
                 "--max_lr=0.0003", "--log_every=7"])
    model, config, options = configs_from_flags(flag_values, vocab_size=300)
    assert (model.cutoffs, model.proj_dims, model.architecture, model.d_head, model.pre_norm) == ((20, 100), (8, 4),
                                                                                                   "ADI", 8, True)
    assert (config.max_lr, options.log_every) == (0.0003, 7)
    flag_values(["train.py", "--cutoffs=", "--proj_dims=", "--architecture="])  # Empty: full softmax, the SuperNet.
    model, _, _ = configs_from_flags(flag_values, vocab_size=300)
    assert (model.cutoffs, model.proj_dims, model.architecture) == ((), None, None)


def test_the_verbose_flag_is_run_options_once_per_flag_values():
    from absl import flags

    flag_values = define_verbose_flag(flags.FlagValues())
    assert define_verbose_flag(flag_values) is flag_values  # A second script imported alongside defines nothing.
    assert flag_values["verbose"].help == field_comments(RunOptions)["verbose"]
    flag_values(["evaluate.py", "--verbose"])
    assert flag_values.verbose and not RunOptions.verbose


# Scripts without RunOptions' flags (train.py and bench.py take --verbose with them): three that start without
# TensorFlow, and one of the three that import it (each calls the same define_verbose_flag).


@pytest.mark.parametrize("script", ["plot_arch.py", "optimal_cuts.py", "savings.py",
                                    pytest.param("evaluate.py", marks=pytest.mark.slow)])
def test_every_script_takes_verbose(script):
    result = subprocess.run([sys.executable, script, "--verbose", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    listed = re.search(r"--\[no\]verbose: (.+?)\(default: 'false'\)", result.stdout, re.S)
    assert listed and listed.group(1).split() == field_comments(RunOptions)["verbose"].split(), result.stdout[-3000:]


@pytest.mark.parametrize("overrides, fragment", [
    (dict(num_heads=3), "num_heads=3"),
    (dict(architecture="AAXD"), "architecture='AAXD'"),
    (dict(architecture=""), "architecture=''"),
    (dict(cutoffs=(30, 20)), "cutoffs=(30, 20)"),
    (dict(d_model=15, num_heads=1), "d_model=15"),
    (dict(mem_len=-1), "mem_len=-1"),
    (dict(clamp_len=0), "clamp_len=0"),
    (dict(dropout_rate=1.0), "dropout_rate=1.0"),
])
def test_bad_configs_are_refused_with_the_field_and_value(overrides, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**{**TINY, **overrides})


def test_derived_architecture_reads_the_argmax_of_each_block():
    pi = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    assert derived_architecture(pi) == "ADI"


def test_candidate_names_are_the_architecture_letters_spelt_out():
    assert CANDIDATE_NAMES == ("attention", "dense", "identity")  # TensorBoard's pi/block_i/<name> tags.
    assert "".join(name[0].upper() for name in CANDIDATE_NAMES) == CANDIDATES


@pytest.mark.parametrize("num_layers, par_ratio, expected", [
    (6, 5, "ADDDDD"),  # round(1.2) = 1 attention block, at block 0.
    (6, 2, "AAADDD"),  # 3 attention blocks fill 3 of the first 4 (indices below 4).
    (12, 4, "ADADDADDDDDD"),  # 3 over the first 8: at 0, 8/3 and 16/3 rounded down.
    (12, 6, "ADDDADDDDDDD"),  # 2 over the first 8: at 0 and 4.
    (24, 8, "ADDDDADDDDADDDDDDDDDDDDD"),  # 3 over the first 16: at 0, 5 and 10.
    (32, 5, "ADDADDDADDDADDADDDADDDDDDDDDDDDD"),  # round(6.4) = 6 over the first 22 (22 > 64/3 > 21).
    (10, 4, "ADADADDDDD"),  # 2.5 rounds half up to 3, over the first 7 (7 > 20/3 > 6): at 0, 2 and 4.
])
def test_par_architecture_worked_by_hand(num_layers, par_ratio, expected):
    assert par_architecture(num_layers, par_ratio) == expected


@pytest.mark.parametrize("par_ratio", [1.5, 2, 3, 4, 5, 6, 8])
def test_par_architecture_keeps_both_rules_at_every_depth(par_ratio):
    for num_layers in range(1, 49):
        architecture = par_architecture(num_layers, par_ratio)
        attention = [block for block, kind in enumerate(architecture) if kind == "A"]
        assert len(architecture) == num_layers and set(architecture) <= set("AD")
        assert len(attention) == max(1, math.floor(num_layers / par_ratio + 0.5)), (num_layers, architecture)
        assert attention[0] == 0 and 3 * attention[-1] < 2 * num_layers, (num_layers, architecture)  # Rule 1.
        gaps = np.diff(attention + [attention[0] + (2 * num_layers + 2) // 3])  # Evenly: the gaps differ by at most 1.
        assert gaps.max() - gaps.min() <= 1, (num_layers, architecture)


@pytest.mark.parametrize("par_ratio", [0, -2, 1])
def test_par_architecture_refuses_a_ratio_that_breaks_the_rules(par_ratio):
    with pytest.raises(ValueError, match=f"--par_ratio={par_ratio}"):
        par_architecture(12, par_ratio)


def test_par_ratio_flag_gives_the_architecture_and_config_records_the_string():
    from absl import flags

    flag_values = define_flags(flags.FlagValues())
    flag_values(["train.py", "--num_layers=12", "--par_ratio=4"])
    model, _, _ = configs_from_flags(flag_values, vocab_size=12000)
    assert model == ModelConfig(vocab_size=12000, architecture="ADADDADDDDDD")  # As --architecture=ADADDADDDDDD gives.


@pytest.mark.parametrize("other", ["--architecture=ADAD"] + [f"--{name}" if name in ("gumbel_per_example",
                                   "straight_through", "single_path") else f"--{name}={CHOICES.get(name, ['1'])[0]}"
                                   for name in SUPERNET_ONLY])
def test_par_ratio_is_refused_beside_the_architecture_or_a_search_option(other):
    from absl import flags

    flag_values = define_flags(flags.FlagValues())
    flag_values(["train.py", "--par_ratio=4", other])
    with pytest.raises(ValueError, match=f"^--par_ratio fixes the architecture, so it cannot take {other.split('=')[0]}.$"):
        configs_from_flags(flag_values, vocab_size=300)
