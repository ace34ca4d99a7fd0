"""Every setting of a run, its default and its allowed values, written once; the flags are made from them.

    ModelConfig   the model's hyperparameters (model.py builds it)
    TrainConfig   optimisation and the search (train.py)
    RunOptions    logging, saving, devices and memory, which may change when a run resumes

Each field's trailing comment is its flag's help, and CHOICES lists the values of every field that
takes a name, so the dataclasses, the flags of train.py and bench.py, and the checks agree. The
module imports no TensorFlow, so that scripts that only need these names start in a moment.
"""
import dataclasses
import inspect
import math
import re
import sys
import typing

import numpy as np

# A dataset's folder and files, which scripts that read no data (optimal_cuts.py) need too.
DEFAULT_DATA_DIR = "data/tfrecords"  # What ./create_tfrecords.sh builds and train.py reads.
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "spm.model"
UNIGRAM_FILE = "unigram.txt"

PAD_ID = 0  # Never a target: padding counts in neither the numerator nor the denominator.
EOL_ID = 1  # Ends every line of text.

CANDIDATES = "ADI"  # A stochastic block's candidates, in pi's column order: attention, dense, identity.
CANDIDATE_NAMES = ("attention", "dense", "identity")  # The same, spelt out: figure labels and TensorBoard tags.

CHOICES = {
    "jit_compile": ("on", "off", "auto"),
    "precision": ("auto", "float32", "bfloat16", "float16"),
    "strategy": ("default", "mirrored", "multi_worker", "tpu"),
    "arch_schedule": ("constant", "after_warmup", "weights"),
    "eval_mode": ("mix", "argmax"),
    "cost_source": ("flops", "table"),
}


def check_choice(name, value):
    """Refuses a value outside CHOICES[name], naming the flag and what would be valid."""
    if value not in CHOICES[name]:
        raise ValueError(f"--{name}={value!r}: expected one of {', '.join(CHOICES[name])}.")
    return value


def check_at_least(settings, **minimums):
    for name, minimum in minimums.items():
        if getattr(settings, name) < minimum:
            raise ValueError(f"--{name}={getattr(settings, name)}: must be at least {minimum}.")


def check_positive(settings, *names):
    for name in names:
        if not getattr(settings, name) > 0:
            raise ValueError(f"--{name}={getattr(settings, name)}: must be positive.")


def check_cutoffs(cutoffs, vocab_size):
    """Cutoffs come without the vocab size: strictly increasing ids in (0, vocab_size)."""
    given, cutoffs = tuple(cutoffs), list(cutoffs)
    for previous, cutoff in zip([0] + cutoffs, cutoffs):
        if not previous < cutoff < vocab_size:
            raise ValueError(f"cutoffs={given}: {cutoff} is not strictly between {previous} and "
                             f"vocab_size={vocab_size}; give strictly increasing ids, without the vocab size.")
    return cutoffs


def par_architecture(num_layers, par_ratio):
    """The PAR paper's layout without a search: round(num_layers / par_ratio) attention blocks (half up, at
    least one), spread evenly over the first two thirds of the stack from block 0, dense blocks elsewhere.

    par_architecture(12, 4) -> "ADADDADDDDDD": 3 attention blocks at 0, 2 and 5, below block 8.
    """
    if not par_ratio > 0:
        raise ValueError(f"--par_ratio={par_ratio}: must be positive (blocks per attention block, e.g. 5).")
    attention = max(1, math.floor(num_layers / par_ratio + 0.5))
    first_two_thirds = (2 * num_layers + 2) // 3  # Blocks whose index is below 2 * num_layers / 3.
    if attention > first_two_thirds:
        raise ValueError(f"--par_ratio={par_ratio}: {attention} attention blocks do not fit the first two thirds "
                         f"({first_two_thirds} blocks) of --num_layers={num_layers}; use a ratio of at least 1.5.")
    positions = {i * first_two_thirds // attention for i in range(attention)}
    return "".join("A" if block in positions else "D" for block in range(num_layers))


# The options that only a SuperNet's search reads, which a fixed architecture would silently ignore.
SUPERNET_ONLY = ("gumbel_per_example", "straight_through", "single_path", "arch_lr", "arch_schedule", "arch_freeze_steps",
                 "arch_holdout", "cost_weight", "cost_source", "cost_table", "cost_mem_len", "tau_start", "tau_end")


def derived_architecture(pi):
    """pi [num_blocks, len(CANDIDATES)] -> each block's most probable candidate's letter, e.g. "AADDDI"."""
    return "".join(CANDIDATES[i] for i in np.argmax(pi, axis=1))


@dataclasses.dataclass
class ModelConfig:
    """Every hyperparameter of the model, named once; checked on creation."""

    vocab_size: int  # Token ids 0..vocab_size-1, padding included.
    d_model: int = 128  # Width of the residual stream (even: it holds [sin | cos] encodings).
    num_heads: int = 4  # Number of attention heads.
    d_head: int | None = None  # Width of each head; unset = d_model // num_heads.
    d_ffn: int = 1024  # Inner width of the dense (feed-forward) blocks.
    num_layers: int = 6  # Blocks; with an architecture, len(architecture).
    mem_len: int = 16  # Positions of memory per attention block.
    dropout_rate: float = 0.1  # Dropout on embeddings, block outputs, the FFN inner layer and the final hidden.
    attention_dropout_rate: float = 0.0  # Dropout on attention weights.
    cutoffs: tuple = (250, 2500)  # Adaptive softmax cluster boundaries over frequency-ranked ids; empty = full softmax.
    proj_factor: int = 4  # Each tail cluster's projection is this factor narrower than the previous one.
    proj_dims: tuple | None = None  # Projection width of each tail cluster, overriding proj_factor; unset = by proj_factor.
    architecture: str | None = None  # A fixed architecture, e.g. AADDDI (attention, dense, identity); unset = the SuperNet of num_layers stochastic blocks.
    pre_norm: bool = False  # LayerNorm before each block's sublayer (and once at the end) instead of after.
    clamp_len: int = -1  # Distances beyond clamp_len use clamp_len's encoding; -1 = no clamping.
    gumbel_per_example: bool = False  # One Gumbel sample per example ([B, 3]) instead of per step ([3]).
    straight_through: bool = False  # Hard one-hot Gumbel samples forward, soft gradients backward.
    tie_embeddings: bool = False  # The input embedding doubles as the output weights of the head's shortlist.
    single_path: bool = False  # Training runs only each block's sampled candidate (GDAS): a hard sample forward, its soft gradient to the logits.

    def __post_init__(self):
        # JSON turns tuples into lists; a config read back must equal the one written.
        self.cutoffs = tuple(self.cutoffs)
        self.proj_dims = None if self.proj_dims is None else tuple(self.proj_dims)
        if self.architecture is not None:
            if not self.architecture or set(self.architecture) - set(CANDIDATES):
                raise ValueError(f"architecture={self.architecture!r} must be a non-empty string of "
                                 f"A (attention), D (dense) and I (identity), or None for the SuperNet.")
            self.num_layers = len(self.architecture)
        positive = ("vocab_size", "d_model", "num_heads", "d_ffn", "num_layers", "proj_factor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even: the relative encodings are [sin | cos] halves.")
        if self.d_head is None and self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model} "
                             f"(or set d_head explicitly).")
        if self.d_head is not None and self.d_head < 1:
            raise ValueError(f"d_head={self.d_head} must be at least 1, or None for d_model // num_heads.")
        if self.mem_len < 0:
            raise ValueError(f"mem_len={self.mem_len} must be 0 or more.")
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1).")
        check_cutoffs(self.cutoffs, self.vocab_size)
        if self.proj_dims is not None and len(self.proj_dims) != len(self.cutoffs):
            raise ValueError(f"proj_dims={self.proj_dims} must give one width per cutoff (cutoffs={self.cutoffs}).")
        if self.clamp_len != -1 and self.clamp_len < 1:
            raise ValueError(f"clamp_len={self.clamp_len} must be -1 (no clamping) or at least 1.")
        if self.single_path and self.gumbel_per_example:
            raise ValueError("single_path=True runs one candidate per block for the whole batch; it cannot take "
                             "gumbel_per_example=True (one sample per example).")

    @property
    def head_dim(self):
        """d_head, or d_model // num_heads when it is None."""
        return self.d_head or self.d_model // self.num_heads

    @property
    def block_kinds(self):
        """Per block, the candidates it builds: "ADI" for each SuperNet block, else one letter."""
        return self.architecture or (CANDIDATES,) * self.num_layers


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings; each default is written here only."""

    epochs: int = 20  # Passes over the training split.
    max_lr: float = 1e-4  # Peak learning rate of the weights, reached after warmup.
    warmup_steps: int = 4000  # Linear warmup from 0, then cosine decay to 0 at the last step.
    clip_norm: float = 0.25  # Global-norm gradient clipping of the weights (Transformer-XL's value); 0 disables.
    arch_lr: float = 1e-3  # Adam learning rate of the architecture logits (their peak under arch_schedule=weights).
    arch_schedule: str = "constant"  # The logits' learning rate by step: constant (arch_lr from step 0, as the original) | after_warmup (0 until the weights' warmup ends, then arch_lr) | weights (the weights' schedule scaled to peak at arch_lr).
    arch_freeze_steps: int = 0  # The logits stay put for this many steps first, whatever arch_schedule; 0 = no freeze.
    arch_holdout: float = 0.0  # Fraction of each epoch's training batches (its last ones, a stream of their own with its own memory) that update only the logits, the rest only the weights; 0 = both on every batch (the original).
    cost_weight: float = 0.0  # lambda: the search's loss adds lambda x the expected cost of its blocks (pi-weighted, as a fraction of the costliest candidate's); 0 = cross-entropy alone.
    cost_source: str = "flops"  # Each candidate's cost in that term: flops (forward FLOPs per token, costs.candidate_flops_per_token) | table (cost_table).
    cost_table: tuple = ()  # Measured costs of attention, dense and identity (e.g. ms from bench.py's cost table), for cost_source=table.
    cost_mem_len: int = -1  # With cost_source=flops: the memory length to count attention at, e.g. a long evaluation memory; -1 = mem_len.
    tau_start: float = 1.0  # Gumbel-softmax temperature of the first step.
    tau_end: float = 0.1  # Gumbel-softmax temperature of the last step, annealed exponentially from tau_start.
    seed: int = 0  # Seeds weights, dropout and Gumbel noise.
    jit_compile: str = "auto"  # XLA for the train and eval steps: on | off | auto (on where faster, see devices.use_xla).
    precision: str = "auto"  # auto (bfloat16 where native, else float32) | float32 | bfloat16 | float16 (loss-scaled): the compute dtype; weights stay float32.

    def __post_init__(self):
        """Refuses a bad setting before anything is written; the message names the flag."""
        for name in ("jit_compile", "arch_schedule", "precision", "cost_source"):
            check_choice(name, getattr(self, name))
        check_at_least(self, epochs=1, warmup_steps=0, clip_norm=0.0, arch_lr=0.0, arch_freeze_steps=0, cost_weight=0.0,
                       cost_mem_len=-1)
        check_positive(self, "max_lr", "tau_start", "tau_end")
        if not 0.0 <= self.arch_holdout < 0.5:
            raise ValueError(f"--arch_holdout={self.arch_holdout}: must be in [0, 0.5), a minority of the batches.")
        self.cost_table = tuple(float(cost) for cost in self.cost_table)
        if self.cost_source == "table" and (len(self.cost_table) != len(CANDIDATES) or min(self.cost_table) < 0
                                            or max(self.cost_table) <= 0):
            raise ValueError(f"--cost_table={','.join(map(str, self.cost_table))}: with --cost_source=table, give "
                             f"{len(CANDIDATES)} costs ({', '.join(CANDIDATE_NAMES)}), none negative, not all 0.")


@dataclasses.dataclass
class RunOptions:
    """How often to log and save, on what devices and in how many chunks; these may change when a run resumes."""

    log_every: int = 100  # Steps between loss/perplexity/lr/tokens-per-second logs (a search adds tau) and pi records.
    checkpoint_every: int = 1000  # Steps between checkpoints (one is also saved at each epoch's end).
    stop_after_steps: int = 0  # Save and stop once this global step is reached (a planned pause); 0 = never.
    eval_batches: int = 0  # Limit validation/test to this many batches (quick runs); 0 = whole split.
    strategy: str = "default"  # tf.distribute: default | mirrored | multi_worker | tpu (see README).
    batch_chunk: int = 1  # Gradient accumulation: each replica's rows of a batch run in this many chunks, one after another, their gradients summed into one update (less memory, the same step but for float rounding and dropout's draws; Transformer-XL's --batch_chunk).
    intra_op_threads: int = 1  # Threads per op; 1 lets the cores run independent ops (a block's candidates) at once; 0 = TensorFlow's choice.
    verbose: bool = False  # Keep TensorFlow's start-up and INFO lines (such as each checkpoint save's) on the console.

    def __post_init__(self):
        check_choice("strategy", self.strategy)
        check_at_least(self, log_every=1, checkpoint_every=1, stop_after_steps=0, eval_batches=0, batch_chunk=1,
                       intra_op_threads=0)


# ---------------------------------------------------------------------------------------------
# Flags made from the dataclasses.

FLOAT_LISTS = ("cost_table",)  # The tuple fields of floats; the others (cutoffs, widths) hold ints.
SCRIPT = sys.argv[0]  # The flags are the running script's, so that its --help lists them (absl keys them so).


def field_comments(settings_class):
    """{field name: its trailing comment} of a dataclass: the comments written once are the flags' help."""
    return dict(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.+)$", inspect.getsource(settings_class), re.MULTILINE))


def field_kind(field):
    """(int, float, bool, str or tuple, whether None is allowed) of a ModelConfig, TrainConfig or RunOptions field."""
    alternatives = typing.get_args(field.type) or (field.type,)  # int | None -> (int, NoneType); int -> ().
    kinds = [kind for kind in alternatives if kind is not type(None)]
    return typing.get_origin(kinds[0]) or kinds[0], len(kinds) < len(alternatives)


def define_dataclass_flags(settings_class, flag_values, skip=(), only=None):
    """One flag per field (or per field named in `only`), with the field's default and its comment as help;
    tuples are comma-separated lists."""
    from absl import flags

    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_boolean,
              str: flags.DEFINE_string, tuple: flags.DEFINE_list}
    comments = field_comments(settings_class)
    for field in dataclasses.fields(settings_class):
        if field.name not in skip and (only is None or field.name in only):
            kind, _ = field_kind(field)
            default = field.default if kind is not tuple or field.default is None else [str(v) for v in field.default]
            define[kind](field.name, default, comments[field.name], flag_values=flag_values, module_name=SCRIPT)


def dataclass_from_flags(settings_class, flag_values, **given):
    """The dataclass that the flags describe; an empty --x= leaves an optional field None."""
    values = {}
    for field in dataclasses.fields(settings_class):
        if field.name in given:
            continue
        value, (kind, optional) = flag_values[field.name].value, field_kind(field)
        if optional and value in (None, "", []):
            value = None
        elif kind is tuple:
            value = tuple(float(v) if field.name in FLOAT_LISTS else int(v) for v in value)
        values[field.name] = value
    return settings_class(**values, **given)


def define_flags(flag_values=None):
    """The flags of train.py (and bench.py): --data_dir, --logdir, --model_name, and ModelConfig's (but
    vocab_size, the dataset's), TrainConfig's and RunOptions' fields."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "Dataset built by ./create_tfrecords.sh.",
                        flag_values=flag_values, module_name=SCRIPT)
    flags.DEFINE_string("logdir", "logs", "Runs go to LOGDIR/MODEL_NAME (as in tensorboard --logdir).",
                        flag_values=flag_values, module_name=SCRIPT)
    flags.DEFINE_string("model_name", "base", "Name of the run (its directory under --logdir).", flag_values=flag_values,
                        module_name=SCRIPT)
    define_dataclass_flags(ModelConfig, flag_values, skip=("vocab_size",))
    flags.DEFINE_float("par_ratio", None, "Fixes the architecture by the PAR paper's rules instead of a search: "
                       "round(num_layers / par_ratio) attention blocks spread over the first two thirds of the stack, "
                       "dense blocks elsewhere (config.par_architecture); config.json records the string, as "
                       "--architecture would.", flag_values=flag_values, module_name=SCRIPT)
    define_dataclass_flags(TrainConfig, flag_values)
    define_dataclass_flags(RunOptions, flag_values)
    return flag_values


def train_data_dir(argv):
    """The --data_dir that train.py reads from these arguments, flag files (--flagfile) read as absl reads
    them, a later flag winning; None if they do not parse, which train.py then reports itself.
    base_model.sh builds this directory first when it is missing."""
    from absl import flags

    flag_values = define_flags(flags.FlagValues())
    try:
        flag_values([SCRIPT, *argv], known_only=True)
    except flags.Error:
        return None
    return flag_values.data_dir


def define_verbose_flag(flag_values=None):
    """--verbose, as RunOptions.verbose gives it to train.py, for the scripts without RunOptions' flags; defined once
    per FlagValues, since scripts imported together (as in the tests) share absl's FLAGS."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    if "verbose" not in flag_values:
        flags.DEFINE_boolean("verbose", RunOptions.verbose, field_comments(RunOptions)["verbose"],
                             flag_values=flag_values, module_name=SCRIPT)
    return flag_values


def architecture_from_flags(flag_values):
    """--architecture, or the string --par_ratio gives for --num_layers; the latter refused beside the former or
    beside an option only a search reads."""
    if flag_values.par_ratio is None:
        return flag_values.architecture or None
    given = [name for name in ("architecture",) + SUPERNET_ONLY if flag_values[name].present]
    if given:
        raise ValueError(f"--par_ratio fixes the architecture, so it cannot take --{', --'.join(given)}.")
    return par_architecture(flag_values.num_layers, flag_values.par_ratio)


def configs_from_flags(flag_values, vocab_size):
    model_config = dataclass_from_flags(ModelConfig, flag_values, vocab_size=vocab_size,
                                        architecture=architecture_from_flags(flag_values))
    return model_config, dataclass_from_flags(TrainConfig, flag_values), dataclass_from_flags(RunOptions, flag_values)
