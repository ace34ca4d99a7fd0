"""Trains a PAR Transformer-XL SuperNet (or a fixed architecture) on context-batched TFRecords.

    python train.py --data_dir=data/tfrecords --model_name=base     # or ./base_model.sh

Everything a run writes lives in logs/<model_name>/: TensorBoard events (train/, valid/),
training_log.log, config.json, checkpoints/ (latest and best/), pi_history.jsonl, pi.gif/pi.png,
results.json and export/ (config, weights and tokenizer for evaluate.py and generate.py). Rerunning
the same command resumes from the latest checkpoint exactly: same step, lr, tau, memory, RNG and
next batch.

Validation and test scores (perplexity per token and per word) come from evaluate.py; the config
record, checkpoint reading and export live in runs.py; threads, XLA, precision and the tf.distribute
strategy in devices.py. Every ModelConfig, TrainConfig and RunOptions field is a flag, with its
comment as help.
"""
import dataclasses
import inspect
import json
import logging
import math
import pathlib
import re
import shutil
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf

import data_utils
import devices
import plot_arch
import runs
from adaptive_softmax import tail_capacities, tail_shares
from evaluate import evaluate_both_ways
from gumbel import ExponentialTauSchedule
from model import Memory, ModelConfig, TransformerXL, count_parameters, flops_per_token


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings; each default is written here only."""

    epochs: int = 20  # Passes over the training split.
    max_lr: float = 1e-4  # Peak learning rate of the weights, reached after warmup.
    warmup_steps: int = 4000  # Linear warmup from 0, then cosine decay to 0 at the last step.
    clip_norm: float = 0.25  # Global-norm gradient clipping of the weights (Transformer-XL's value); 0 disables.
    arch_lr: float = 1e-3  # Adam learning rate of the architecture logits (their peak under arch_schedule=weights).
    arch_schedule: str = "constant"  # The logits' learning rate by step: constant (arch_lr from step 0, as the original) | after_warmup (0 until the weights' warmup ends, then arch_lr) | weights (the weights' schedule scaled to peak at arch_lr).
    tau_start: float = 1.0  # Gumbel-softmax temperature of the first step.
    tau_end: float = 0.1  # Gumbel-softmax temperature of the last step, annealed exponentially from tau_start.
    seed: int = 0  # Seeds weights, dropout and Gumbel noise.
    jit_compile: str = "auto"  # XLA for the train and eval steps: on | off | auto (on where faster, see devices.use_xla).
    precision: str = "auto"  # auto (bfloat16 where native, else float32) | float32 | bfloat16 | float16 (loss-scaled): the compute dtype; weights stay float32.

    def __post_init__(self):
        """Refuses a bad setting before anything is written; the message names the flag."""
        check_choice("jit_compile", self.jit_compile, ("on", "off", "auto"))
        check_choice("arch_schedule", self.arch_schedule, ("constant", "after_warmup", "weights"))
        check_choice("precision", self.precision, ("auto", "float32", "bfloat16", "float16"))
        check_at_least(self, epochs=1, warmup_steps=0, clip_norm=0.0, arch_lr=0.0)
        check_positive(self, "max_lr", "tau_start", "tau_end")


@dataclasses.dataclass
class RunOptions:
    """How often to log and save, and on what devices; these may change when a run resumes."""

    log_every: int = 100  # Steps between loss/perplexity/tau/lr/tokens-per-second logs and pi records.
    checkpoint_every: int = 1000  # Steps between checkpoints (one is also saved at each epoch's end).
    stop_after_steps: int = 0  # Save and stop once this global step is reached (a planned pause); 0 = never.
    eval_batches: int = 0  # Limit validation/test to this many batches (quick runs); 0 = whole split.
    strategy: str = "default"  # tf.distribute: default | mirrored | multi_worker | tpu (see README).
    intra_op_threads: int = 1  # Threads per op; 1 lets the cores run independent ops (a block's candidates) at once; 0 = TensorFlow's choice.
    verbose: bool = False  # Show TensorFlow's INFO messages, such as each checkpoint save, on the console.

    def __post_init__(self):
        check_choice("strategy", self.strategy, ("default", "mirrored", "multi_worker", "tpu"))
        check_at_least(self, log_every=1, checkpoint_every=1, stop_after_steps=0, eval_batches=0, intra_op_threads=0)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name}={value!r}: expected one of {', '.join(choices)}.")


def check_at_least(settings, **minimums):
    for name, minimum in minimums.items():
        if getattr(settings, name) < minimum:
            raise ValueError(f"--{name}={getattr(settings, name)}: must be at least {minimum}.")


def check_positive(settings, *names):
    for name in names:
        if not getattr(settings, name) > 0:
            raise ValueError(f"--{name}={getattr(settings, name)}: must be positive.")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf, or diverged; the message names the step."""


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each variable's update done by TensorFlow's fused ResourceApplyAdam kernel.

    Keras 3 writes the update as about 15 element-wise ops per variable, each a kernel launch and
    a pass over memory on a CPU: about 12 ms of a 120 ms bfloat16 SuperNet step (bench.py, 2 cores).
    The kernel, the one tf.keras 2 used, computes the same update in one pass; the moments, the
    step count and the schedule stay Keras' own, so checkpoints do not change. Under a distribution
    strategy, or with amsgrad, Keras' own update runs.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or tf.distribute.has_strategy():
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step), beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(tf.convert_to_tensor(gradient), dtype))


def learning_rate_schedule(config, total_steps):
    """The weights' learning rate by steps taken: Keras' linear warmup to max_lr, then cosine decay to 0."""
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - config.warmup_steps, 1),
        warmup_target=config.max_lr,
        warmup_steps=config.warmup_steps,
    )


def arch_learning_rate_schedule(config, total_steps):
    """The architecture logits' learning rate: a float (constant) or a schedule by steps taken."""
    if config.arch_schedule == "after_warmup":  # Steps 0 .. warmup_steps - 1 take 0.
        return keras.optimizers.schedules.PiecewiseConstantDecay([config.warmup_steps - 1], [0.0, config.arch_lr])
    if config.arch_schedule == "weights":
        return learning_rate_schedule(dataclasses.replace(config, max_lr=config.arch_lr), total_steps)
    return config.arch_lr


def make_weight_optimizer(config, schedule):
    """The weights' Adam, following the learning rate `schedule`, with global-norm clipping."""
    optimizer = FusedAdam(schedule, **({"global_clipnorm": config.clip_norm} if config.clip_norm > 0 else {}))
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
    return keras.optimizers.LossScaleOptimizer(optimizer) if config.precision == "float16" else optimizer


class Trainer:
    """The model, its two optimizers, the schedules and every piece of state a checkpoint must hold.

    The memory of the previous segment lives in variables, so it survives from one compiled step
    to the next (and into checkpoints) without leaving the device. Under a tf.distribute strategy
    each replica always takes the same rows of the global batch, so every row stays one
    contiguous stream with its memory; the replicas' new memories are gathered back into the
    one global memory after each step, and their NLL sums are added before the perplexity.
    """

    def __init__(self, model_config, config, steps_per_epoch, batch_size, strategy=None, tail_shares=None):
        """tail_shares: each adaptive softmax tail's share of the training tokens. In a step compiled
        with XLA each tail then scores a static number of rows sized from it (tail_capacities), not
        every row; without XLA each tail scores exactly its own rows anyway."""
        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.divergence_limit = 2 * math.log(model_config.vocab_size)  # Twice uniform guessing's loss.
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(f"The dataset's batch_size {batch_size} does not split over {replicas} replicas; "
                             f"rebuild it with a --batch_size that {replicas} divides.")
        self.batch_size = batch_size
        self.total_steps = config.epochs * steps_per_epoch
        # Indexed by steps taken before a step: the first step uses tau_start, the last tau_end.
        self.tau_schedule = ExponentialTauSchedule(config.tau_start, config.tau_end, max(self.total_steps - 1, 1))
        with self.strategy.scope():
            self.model = TransformerXL(model_config, dtype=devices.dtype_policy(config.precision))
            self.learning_rate_schedule = learning_rate_schedule(config, self.total_steps)
            self.weight_optimizer = make_weight_optimizer(config, self.learning_rate_schedule)
            self.arch_optimizer = FusedAdam(arch_learning_rate_schedule(config, self.total_steps))
            memory = self.model.initial_memory(batch_size)
            self.model(tf.zeros([batch_size, 1], tf.int32), memory)  # Builds every weight before optimizers see them.
            self.weight_optimizer.build(self.model.weight_variables)
            if self.model.arch_variables:
                self.arch_optimizer.build(self.model.arch_variables)
            # Every replica writes the same gathered memory, so the first replica's copy is the value.
            shared = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.memory_states = tf.Variable(memory.states, name="memory_states", **shared)
            self.memory_valid = tf.Variable(memory.valid_length, name="memory_valid_length", **shared)
            counter = dict(trainable=False, dtype=tf.int64)
            self.global_step = tf.Variable(0, name="global_step", **counter)
            self.epoch = tf.Variable(0, name="epoch", **counter)
            self.batch_in_epoch = tf.Variable(0, name="batch_in_epoch", **counter)
            self.first_bad_step = tf.Variable(-1, name="first_non_finite_step", **counter)
            self.nll_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="interval_nll_sum")
            self.token_count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="interval_token_count")
        single_device = self.strategy is tf.distribute.get_strategy() or replicas == 1
        # XLA compiles the whole step on one device; across replicas the collectives stay outside it.
        self.jit_compile = devices.use_xla(config.jit_compile) and single_device
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile)
        self.tail_shares = tail_shares if self.jit_compile and model_config.cutoffs else None
        # Keras 3 layers are not all tracked by tf.train.Checkpoint, so the model's variables
        # (weights, arch logits, RNG states) are saved as one ordered list.
        self.checkpoint = tf.train.Checkpoint(
            model_variables=list(self.model.variables),
            weight_optimizer=self.weight_optimizer,
            arch_optimizer=self.arch_optimizer,
            memory_states=self.memory_states,
            memory_valid=self.memory_valid,
            global_step=self.global_step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            nll_sum=self.nll_sum,
            token_count=self.token_count,
        )

    @property
    def step(self):
        """Steps taken; the optimizer's own count lags it when float16 loss scaling skips a step."""
        return self.global_step

    def tau_of_step(self, step):
        """The Gumbel-softmax temperature that training step `step` (counted from 1) uses."""
        return self.tau_schedule(step - 1)

    def learning_rate_of_step(self, step):
        """The weights' learning rate that training step `step` (counted from 1) uses."""
        return self.learning_rate_schedule(step - 1)

    def reset_memory(self):
        memory = self.model.initial_memory(self.batch_size)
        self.memory_states.assign(memory.states)
        self.memory_valid.assign(memory.valid_length)

    def _train_step(self, inputs, targets):
        """inputs, targets [B, T] of the global batch -> mean NLL per scored token."""
        nll_sum, scored = self.strategy.run(self._replica_step, args=(inputs, targets))
        nll_sum = self.strategy.reduce(tf.distribute.ReduceOp.SUM, nll_sum, axis=None)
        scored = self.strategy.reduce(tf.distribute.ReduceOp.SUM, scored, axis=None)
        loss = nll_sum / tf.maximum(scored, 1.0)
        self.global_step.assign_add(1)
        self.batch_in_epoch.assign_add(1)
        self.nll_sum.assign_add(tf.cast(nll_sum, tf.float64))
        self.token_count.assign_add(tf.cast(scored, tf.float64))
        # A loss far above uniform guessing's ln(vocab_size) has diverged, finite or not.
        sane = tf.math.is_finite(loss) & (loss <= self.divergence_limit)
        bad = tf.logical_and(self.first_bad_step < 0, tf.logical_not(sane))
        # global_step is now this step's 1-based number, as logged.
        self.first_bad_step.assign(tf.where(bad, self.step, self.first_bad_step))
        return loss

    def _replica_step(self, inputs, targets):
        """The distribution glue around `_update`: this replica's rows and memory in, the global memory out.

        Replica r always takes rows r*B/R .. (r+1)*B/R - 1 of the global batch; on one device, all of
        them. Returns (NLL sum, scored tokens) of its rows.
        """
        context = tf.distribute.get_replica_context()
        rows = self.batch_size // context.num_replicas_in_sync
        first = context.replica_id_in_sync_group * rows
        inputs, targets = inputs[first : first + rows], targets[first : first + rows]
        memory = Memory(self.memory_states[:, first : first + rows], self.memory_valid)
        scored = tf.reduce_sum(tf.cast(tf.not_equal(targets, data_utils.PAD_ID), tf.float32))
        # Normalised by the global count, the replicas' gradients add up to the global batch's.
        nll_sum, new_memory = self._update(inputs, targets, memory, context.all_reduce(tf.distribute.ReduceOp.SUM, scored))
        # Rows back in replica order; in float32, as CPU collectives take no bfloat16.
        gathered = context.all_gather(tf.cast(new_memory.states, tf.float32), axis=1)
        self.memory_states.assign(tf.cast(gathered, self.memory_states.dtype))
        self.memory_valid.assign(new_memory.valid_length)
        return nll_sum, scored

    def _update(self, inputs, targets, memory, scored):
        """Forward, backward and both optimizers' updates, the loss being the rows' NLL per `scored` token.

        Returns (the rows' NLL sum, new Memory).
        """
        weights, arch = self.model.weight_variables, self.model.arch_variables
        capacities = tail_capacities(self.tail_shares, targets.shape.num_elements()) if self.tail_shares else None
        loss_scaled = isinstance(self.weight_optimizer, keras.optimizers.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            nll, new_memory = self.model.token_nll(inputs, targets, memory, tau=self.tau_of_step(self.global_step + 1),
                                                   training=True, gather_rows=not self.jit_compile,
                                                   tail_capacities=capacities)
            loss = tf.reduce_sum(nll) / tf.maximum(scored, 1.0)
            scaled_loss = self.weight_optimizer.scale_loss(loss) if loss_scaled else loss
        gradients = tape.gradient(scaled_loss, weights + arch)
        arch_gradients = gradients[len(weights):]
        if loss_scaled and arch:  # Unscale by hand; an overflowing step leaves the logits' gradient at 0.
            scale = tf.cast(self.weight_optimizer.dynamic_scale, tf.float32)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in arch_gradients])
            arch_gradients = [tf.where(finite, g / scale, tf.zeros_like(g)) for g in arch_gradients]
        self.weight_optimizer.apply(gradients[: len(weights)], weights)
        if arch:
            self.arch_optimizer.apply(arch_gradients, arch)
        return tf.reduce_sum(nll), new_memory

    def check_finite(self):
        """Raises NonFiniteLossError if any step since the start had a NaN, inf or diverged loss."""
        bad_step = int(self.first_bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(f"The training loss became NaN or inf, or diverged above "
                                     f"{self.divergence_limit:.2f} (twice ln(vocab_size)), at step {bad_step}.")

    def take_interval_loss(self):
        """Mean NLL per scored token since the last call, and that count; resets both."""
        nll, count = float(self.nll_sum.numpy()), float(self.token_count.numpy())
        self.nll_sum.assign(0.0)
        self.token_count.assign(0.0)
        return nll / max(count, 1.0), count


def make_logger(run_dir, to_file=True):
    """Logs to the console and (if `to_file`) to training_log.log in the run directory."""
    logger = logging.getLogger(f"train.{run_dir}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        console = logging.StreamHandler(sys.stdout)
        # On a terminal the progress bar holds the current line: clear it, and the bar redraws below.
        console.setFormatter(logging.Formatter(("\r\x1b[K" if sys.stdout.isatty() else "") + "%(asctime)s %(message)s"))
        logger.addHandler(console)
        if to_file:
            file = logging.FileHandler(run_dir / "training_log.log")
            file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(file)
    return logger


def log_epoch_time(log, epoch, steps, step_seconds, wall_seconds, validation_seconds, tokens_per_step):
    """Logs an epoch's time in training steps against its wall time, whose excess is validation and bookkeeping."""
    log.info("Epoch %d time: %d training steps took %.1f s (%.1f ms a step, %.0f tokens/s); wall time %.1f s "
             "(%.3fx the steps), validation %.1f s.", epoch, steps, step_seconds, 1000 * step_seconds / max(steps, 1),
             steps * tokens_per_step / max(step_seconds, 1e-9), wall_seconds, wall_seconds / max(step_seconds, 1e-9),
             validation_seconds)


def write_pi(trainer, run_dir, writer, step):
    """Appends pi to the history and logs each block's probabilities to TensorBoard."""
    pi = trainer.model.arch_probabilities()
    tau = float(trainer.tau_of_step(step))
    with open(run_dir / plot_arch.PI_HISTORY_FILE, "a") as f:
        f.write(json.dumps(dict(step=step, tau=tau, pi=np.round(pi, 6).tolist())) + "\n")
    with writer.as_default(step=step):
        for block, row in enumerate(pi):
            for name, value in zip(plot_arch.CANDIDATE_NAMES, row):
                tf.summary.scalar(f"pi/block_{block}/{name}", value)
    return pi


def log_derived_architecture(log, pi, run_dir, step):
    """Logs the architecture the search derives from pi now and the step since which it has, to tell when it settled."""
    path = run_dir / plot_arch.PI_HISTORY_FILE
    history = plot_arch.read_history(run_dir) if path.is_file() else []
    architecture, since = plot_arch.held_since(history + [dict(step=step, pi=pi.tolist())])
    log.info("step %d derived architecture: --architecture=%s, held since step %d.", step, architecture, since)


def forget_pi_after(path, step):
    """Drops pi records a killed run wrote after its last checkpoint; the resumed run writes them again."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def train_and_evaluate(model_config, config, data_dir, run_dir, options=RunOptions()):
    """Trains, validating every epoch, then tests and exports. Resumes from run_dir if it holds a checkpoint.

    Returns a dict of the final validation and test results (or {} when stopped early on purpose).
    Under --strategy=multi_worker every worker runs all of this alike, but only the chief
    (devices.is_chief) writes into run_dir; the others save their checkpoints into a temporary
    directory (devices.checkpoint_write_dir).
    """
    metadata = data_utils.load_metadata(data_dir)
    precision, precision_reason = devices.resolve_precision(config.precision)
    config = dataclasses.replace(config, precision=precision)  # config.json records the precision used.
    if options.strategy == "multi_worker" and precision == "bfloat16" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--strategy=multi_worker with bfloat16 on CPUs: TensorFlow's CPU collectives take no "
                         "bfloat16 variables; pass --precision=float32.")
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy = devices.make_strategy(options.strategy)
    chief = devices.is_chief(strategy)
    record = runs.config_record(model_config, config, data_dir, metadata)
    runs.check_or_save_config(run_dir, record, save=False)
    log = make_logger(run_dir, to_file=chief)
    log.info("Precision %s (%s), on %s.", precision, precision_reason,
             ", ".join(device.name for device in tf.config.list_logical_devices()))
    batch_size, seq_len = metadata["batch_size"], metadata["seq_len"]
    steps_per_epoch = metadata["splits"]["train"]["batches"]
    unigram_path = pathlib.Path(data_dir) / data_utils.UNIGRAM_FILE  # Synthetic datasets have none.
    shares = tail_shares(np.loadtxt(unigram_path), model_config.cutoffs) if unigram_path.is_file() else None
    trainer = Trainer(model_config, config, steps_per_epoch, batch_size, strategy, tail_shares=shares)
    runs.check_or_save_config(run_dir, record, save=chief)  # Only once the run can start.
    model = trainer.model
    checkpoint_dir, write_dir = run_dir / "checkpoints", devices.checkpoint_write_dir(run_dir, strategy)
    best_path = checkpoint_dir / "best" / "best_valid.json"
    best_loss = json.loads(best_path.read_text())["loss"] if best_path.is_file() else float("inf")
    if chief:
        runs.remove_unfinished_saves(checkpoint_dir)
    latest = runs.restore_readable_checkpoint(trainer.checkpoint, checkpoint_dir, log, chief)  # Every worker: the chief's.
    manager = tf.train.CheckpointManager(trainer.checkpoint, write_dir, max_to_keep=2)
    best_manager = tf.train.CheckpointManager(trainer.checkpoint, write_dir / "best", max_to_keep=1)
    if latest:
        log.info("Resumed from %s at step %d.", latest, int(trainer.step.numpy()))
        if chief:
            forget_pi_after(run_dir / plot_arch.PI_HISTORY_FILE, int(trainer.step.numpy()))
    else:
        log.info("Config: %s", json.dumps(record))
        log.info("Parameters: %s", count_parameters(model))
        rounded = [round(share, 4) for share in shares] if shares else None
        log.info("Model FLOPs per token (each adaptive softmax tail for its share %s of tokens): training %.3g, "
                 "inference %.3g", rounded, flops_per_token(model_config, seq_len, training=True, tail_shares=shares),
                 flops_per_token(model_config, seq_len, tail_shares=shares))
        model.summary(print_fn=log.info)
    writers = {name: tf.summary.create_file_writer(str(run_dir / name)) if chief else tf.summary.create_noop_writer()
               for name in ("train", "valid")}

    def check_finite():
        try:
            trainer.check_finite()
        except NonFiniteLossError as error:
            last_good = tf.train.latest_checkpoint(checkpoint_dir) or "none (none was saved)"
            raise NonFiniteLossError(f"{error} Stopped; the last good checkpoint is {last_good}.") from None

    def save(target_manager=manager):
        check_finite()  # Never let a NaN overwrite the last good checkpoint.
        target_manager.save(checkpoint_number=int(trainer.step.numpy()))
        if not chief:
            shutil.rmtree(write_dir.parent)

    def validate(step):
        results = evaluate_both_ways(model, data_utils.make_dataset(data_dir, "valid"),
                                     metadata["splits"]["valid"], batch_size, config.jit_compile,
                                     options.eval_batches)
        log.info("step %d validation: %s", step, json.dumps({k: round(v, 4) for k, v in results.items()}))
        with writers["valid"].as_default(step=step):
            for key, value in results.items():
                tf.summary.scalar(key, value)
            if model.arch_variables and chief:
                pi = model.arch_probabilities()
                png = plot_arch.render_pi(pi, f"step {step}")
                tf.summary.image("pi", tf.image.decode_png(png)[None])
                log_derived_architecture(log, pi, run_dir, step)  # From the chief's pi history.
        return results

    step = int(trainer.step.numpy())
    interval_seconds = 0.0  # Time in training steps (input included) since the last log, for an honest tokens/s.
    valid = None  # The last epoch's validation, reused for the final results.
    for epoch in range(int(trainer.epoch.numpy()), config.epochs):
        done_in_epoch = int(trainer.batch_in_epoch.numpy())
        if done_in_epoch == 0:
            trainer.reset_memory()
        log.info("Epoch %d/%d from batch %d.", epoch + 1, config.epochs, done_in_epoch)
        # A progress bar only on a terminal: elsewhere (a file, a notebook's log) the log lines say it all.
        progress = keras.utils.Progbar(steps_per_epoch, unit_name="step") if sys.stdout.isatty() else None
        epoch_start, first_batch, epoch_step_seconds = time.perf_counter(), done_in_epoch, 0.0
        clock = epoch_start
        for inputs, targets in data_utils.make_dataset(data_dir, "train").skip(done_in_epoch):
            trainer.train_step(inputs, targets)
            seconds = time.perf_counter() - clock
            epoch_step_seconds += seconds
            interval_seconds += seconds
            step += 1
            done_in_epoch += 1
            if step % options.log_every == 0:
                check_finite()
                loss, tokens = trainer.take_interval_loss()
                scalars = dict(loss=loss, perplexity=math.exp(min(loss, 50.0)), tau=float(trainer.tau_of_step(step)),
                               learning_rate=float(trainer.learning_rate_of_step(step)),
                               tokens_per_second=tokens / max(interval_seconds, 1e-9))
                interval_seconds = 0.0
                with writers["train"].as_default(step=step):
                    for key, value in scalars.items():
                        tf.summary.scalar(key, value)
                log.info("step %d %s", step, " ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
                if model.arch_variables and chief:
                    write_pi(trainer, run_dir, writers["train"], step)
                if progress:
                    progress.update(done_in_epoch, [("loss", loss)])
            if step % options.checkpoint_every == 0:
                save()
            if options.stop_after_steps and step >= options.stop_after_steps:
                save()
                log.info("Stopped at step %d as asked; rerun the same command to resume.", step)
                return {}
            clock = time.perf_counter()
        trainer.epoch.assign_add(1)
        trainer.batch_in_epoch.assign(0)
        validation_start = time.perf_counter()
        valid = validate(step)
        validation_seconds = time.perf_counter() - validation_start
        # The best first: a run killed between the two saves resumes before this epoch's end, so it
        # validates this epoch again and finds its best already saved.
        if valid["loss"] < best_loss:
            best_loss = valid["loss"]
            save(best_manager)
            if chief:
                best_path.write_text(json.dumps(dict(step=step, **valid)))
        save()
        log_epoch_time(log, epoch + 1, done_in_epoch - first_batch, epoch_step_seconds,
                       time.perf_counter() - epoch_start, validation_seconds, batch_size * seq_len)

    check_finite()
    results = {"valid_" + k: v for k, v in (valid or validate(step)).items()}
    test = evaluate_both_ways(model, data_utils.make_dataset(data_dir, "test"), metadata["splits"]["test"],
                              batch_size, config.jit_compile, options.eval_batches)
    log.info("test: %s", json.dumps({k: round(v, 4) for k, v in test.items()}))
    with writers["valid"].as_default(step=step):
        for key, value in test.items():
            tf.summary.scalar("test_" + key, value)
    results.update({"test_" + k: v for k, v in test.items()})
    if model.arch_variables:
        results["derived_architecture"] = model.derived_architecture()
        log.info("Derived architecture: --architecture=%s", results["derived_architecture"])
    if chief:
        runs.export(model, run_dir, data_dir)
        if model.arch_variables and (run_dir / plot_arch.PI_HISTORY_FILE).is_file():
            plot_arch.plot_history(run_dir)
            log.info("pi.gif and pi.png in %s", run_dir)
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    for writer in writers.values():
        writer.flush()
    return results


# ---------------------------------------------------------------------------------------------
# Command line.


def field_comments(settings_class):
    """{field name: its trailing comment} of a dataclass: the comments written once are the flags' help."""
    return dict(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.+)$", inspect.getsource(settings_class), re.MULTILINE))


def field_kind(field):
    """(int, float, bool, str or tuple, whether None is allowed) of a ModelConfig, TrainConfig or RunOptions field."""
    alternatives = typing.get_args(field.type) or (field.type,)  # int | None -> (int, NoneType); int -> ().
    kinds = [kind for kind in alternatives if kind is not type(None)]
    return typing.get_origin(kinds[0]) or kinds[0], len(kinds) < len(alternatives)


def define_dataclass_flags(settings_class, flag_values, skip=()):
    """One flag per field, with the field's default and its comment as help; tuples are comma-separated lists."""
    from absl import flags

    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_boolean,
              str: flags.DEFINE_string, tuple: flags.DEFINE_list}
    comments = field_comments(settings_class)
    for field in dataclasses.fields(settings_class):
        if field.name not in skip:
            kind, _ = field_kind(field)
            default = field.default if kind is not tuple or field.default is None else [str(v) for v in field.default]
            define[kind](field.name, default, comments[field.name], flag_values=flag_values)


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
            value = tuple(int(v) for v in value)  # Every tuple field holds ints (cutoffs, widths).
        values[field.name] = value
    return settings_class(**values, **given)


def define_flags(flag_values=None):
    """The flags of train.py (and bench.py): ModelConfig's (but vocab_size, the dataset's), TrainConfig's and RunOptions'."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("data_dir", data_utils.DEFAULT_DATA_DIR, "Dataset built by ./create_tfrecords.sh.",
                        flag_values=flag_values)
    flags.DEFINE_string("logdir", "logs", "Runs go to LOGDIR/MODEL_NAME (as in tensorboard --logdir).",
                        flag_values=flag_values)
    flags.DEFINE_string("model_name", "base", "Name of the run (its directory under --logdir).", flag_values=flag_values)
    define_dataclass_flags(ModelConfig, flag_values, skip=("vocab_size",))
    define_dataclass_flags(TrainConfig, flag_values)
    define_dataclass_flags(RunOptions, flag_values)
    return flag_values


def configs_from_flags(flag_values, vocab_size):
    return (dataclass_from_flags(ModelConfig, flag_values, vocab_size=vocab_size),
            dataclass_from_flags(TrainConfig, flag_values), dataclass_from_flags(RunOptions, flag_values))


def main(argv):
    flag_values = FLAGS
    if len(argv) > 1:
        sys.exit(f"train.py: error: unexpected arguments {argv[1:]}")
    try:
        metadata = data_utils.load_metadata(flag_values.data_dir)
        model_config, config, options = configs_from_flags(flag_values, metadata["vocab_size"])
        if not options.verbose:
            tf.get_logger().setLevel(logging.WARNING)  # Checkpoint saves log at INFO.
        devices.set_intra_op_threads(options.intra_op_threads)  # Before any TF op, as is the strategy:
        devices.make_strategy(options.strategy)  # MultiWorkerMirroredStrategy refuses to start after any TF op.
        results = train_and_evaluate(model_config, config, flag_values.data_dir,
                                     pathlib.Path(flag_values.logdir) / flag_values.model_name, options)
    except (ValueError, NonFiniteLossError, runs.CheckpointError) as error:  # DataError is a ValueError.
        sys.exit(f"train.py: error: {error}")
    except tf.errors.DataLossError as error:
        sys.exit(f"train.py: error: {flag_values.data_dir}: a TFRecord file is damaged ({data_utils.error_line(error)}); "
                 f"rebuild it with ./create_tfrecords.sh --overwrite. The run's checkpoints are intact.")
    if results:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    from absl import app

    FLAGS = define_flags()
    app.run(main)
