"""Trains a PAR Transformer-XL SuperNet (or a fixed architecture) on context-batched TFRecords.

    python train.py --data_dir=data/tfrecords --model_name=base     # or ./base_model.sh

Everything a run writes lives in logs/<model_name>/ (runs.Run lists it). Rerunning the same command
resumes from the latest checkpoint exactly: same step, lr, tau, memory, RNG and next batch.

Here: the Trainer (the model, its optimizers and the compiled step) and the loop around it.
Validation and test scores come from evaluate.py; checkpoints and the export from checkpoints.py;
threads, XLA, precision and the tf.distribute strategy from devices.py. Every field of
config.ModelConfig, TrainConfig and RunOptions is a flag, with its comment as help.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import contextlib
import dataclasses
import functools
import json
import logging
import math
import pathlib
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import checkpoints
import data_utils
import devices
import plot_arch
import reliability
import runs
from adaptive_softmax import tail_capacities
from config import CANDIDATE_NAMES, CANDIDATES, UNIGRAM_FILE, RunOptions, configs_from_flags, define_flags
from costs import candidate_flops_per_token, flops_per_token, tail_shares
from evaluate import evaluate_both_ways
from gumbel import ExponentialTauSchedule
from model import Memory, TransformerXL, count_parameters


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
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([config.warmup_steps - 1], [0.0, config.arch_lr])
    elif config.arch_schedule == "weights":
        schedule = learning_rate_schedule(dataclasses.replace(config, max_lr=config.arch_lr), total_steps)
    else:
        schedule = config.arch_lr
    return FrozenFirst(schedule, config.arch_freeze_steps) if config.arch_freeze_steps else schedule


class FrozenFirst(keras.optimizers.schedules.LearningRateSchedule):
    """0 for the first `steps` steps, then `schedule` (a float or a schedule by steps taken)."""

    def __init__(self, schedule, steps):
        self.schedule, self.steps = schedule, steps

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else self.schedule
        return tf.where(step < self.steps, 0.0, tf.cast(rate, tf.float32))

    def get_config(self):
        return {"schedule": self.schedule, "steps": self.steps}


def steps_frozen(config):
    """Steps during which the logits' learning rate is 0: --arch_freeze_steps, or the warmup under after_warmup."""
    return max(config.arch_freeze_steps, config.warmup_steps if config.arch_schedule == "after_warmup" else 0)


def normalised_costs(candidate_costs, num_blocks):
    """Each candidate's cost as a share of num_blocks of the costliest: so the expected cost of the blocks,
    sum_blocks pi . costs, lies in [0, 1], and lambda is in nats per token for going from free to costliest."""
    costs = np.asarray(candidate_costs, np.float64)
    return costs / (num_blocks * costs.max())


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

    def __init__(self, model_config, config, steps_per_epoch, batch_size, strategy=None, tail_shares=None,
                 candidate_costs=None):
        """tail_shares: each adaptive softmax tail's share of the training tokens. In a step compiled
        with XLA each tail then scores a static number of rows sized from it (tail_capacities), not
        every row; without XLA each tail scores exactly its own rows anyway.
        candidate_costs: the cost of attention, dense and identity that config.cost_weight charges
        the search for (see search_loss); needed when it is not 0.

        With config.arch_holdout, train_step updates only the weights and heldout_step, on batches
        of a stream of its own, only the logits, whose schedule then follows the global step.
        """
        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.holdout = bool(config.arch_holdout) and model_config.architecture is None  # A SuperNet's search option.
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
            arch_schedule = arch_learning_rate_schedule(config, self.total_steps)
            if self.holdout and callable(arch_schedule):  # Its own count is of held-out steps only.
                by_step = arch_schedule
                arch_schedule = lambda: by_step(self.global_step)  # noqa: E731  (Keras takes a callable of no arguments.)
            self.arch_optimizer = FusedAdam(arch_schedule)
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
            if self.holdout:  # The held-out stream's own memory.
                self.heldout_states = tf.Variable(memory.states, name="heldout_memory_states", **shared)
                self.heldout_valid = tf.Variable(memory.valid_length, name="heldout_memory_valid_length", **shared)
        if config.cost_weight and candidate_costs is None:
            raise ValueError(f"--cost_weight={config.cost_weight} needs the candidates' costs.")
        self.cost_shares = tf.constant(normalised_costs(candidate_costs, model_config.num_layers), tf.float32) \
            if config.cost_weight else None
        self.frozen_steps = steps_frozen(config)
        single_device = self.strategy is tf.distribute.get_strategy() or replicas == 1
        # XLA compiles the whole step on one device; across replicas the collectives stay outside it.
        self.jit_compile = devices.use_xla(config.jit_compile) and single_device
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile)
        self.heldout_step = tf.function(self._heldout_step, jit_compile=self.jit_compile)
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
            **(dict(heldout_states=self.heldout_states, heldout_valid=self.heldout_valid) if self.holdout else {}),
        )

    def counters(self):
        """(steps taken, epochs done, batches done in the current epoch), read from their variables.

        Steps taken, not the optimizer's count, which lags it when float16 loss scaling skips a step.
        """
        return int(self.global_step.numpy()), int(self.epoch.numpy()), int(self.batch_in_epoch.numpy())

    def end_epoch(self):
        self.epoch.assign_add(1)
        self.batch_in_epoch.assign(0)

    def tau_of_step(self, step):
        """The Gumbel-softmax temperature that training step `step` (counted from 1) uses."""
        return self.tau_schedule(step - 1)

    def learning_rate_of_step(self, step):
        """The weights' learning rate that training step `step` (counted from 1) uses."""
        return self.learning_rate_schedule(step - 1)

    def reset_memory(self):
        """Empties the memory of the training stream, and of the held-out stream when there is one."""
        memory = self.model.initial_memory(self.batch_size)
        for states, valid in self.streams.values():
            states.assign(memory.states)
            valid.assign(memory.valid_length)

    @property
    def streams(self):
        """{stream: (its memory states, their valid length)}: "train", and "heldout" with arch_holdout."""
        streams = {"train": (self.memory_states, self.memory_valid)}
        if self.holdout:
            streams["heldout"] = (self.heldout_states, self.heldout_valid)
        return streams

    def expected_cost(self):
        """sum over blocks and candidates of pi x cost share: the search's cost, in [0, 1] (normalised_costs)."""
        pi = tf.nn.softmax(tf.stack([tf.convert_to_tensor(logits) for logits in self.model.arch_variables]), axis=-1)
        return tf.reduce_sum(pi * self.cost_shares)

    def search_loss(self, nll_loss):
        """What the logits minimise: the NLL per token plus cost_weight x expected_cost (an additive
        cost term; lambda = 0 is the plain cross-entropy of the original's search)."""
        if not (self.config.cost_weight and self.model.arch_variables):
            return nll_loss
        return nll_loss + self.config.cost_weight * self.expected_cost()

    def _heldout_step(self, inputs, targets):
        """inputs, targets [B, T] of the held-out stream: updates only the logits, at the tau of the
        training step just taken. Returns the mean NLL per scored token."""
        nll_sum, scored = self.strategy.run(functools.partial(self._replica_step, stream="heldout"),
                                          args=(inputs, targets))
        nll_sum = self.strategy.reduce(tf.distribute.ReduceOp.SUM, nll_sum, axis=None)
        scored = self.strategy.reduce(tf.distribute.ReduceOp.SUM, scored, axis=None)
        return nll_sum / tf.maximum(scored, 1.0)

    def _train_step(self, inputs, targets):
        """inputs, targets [B, T] of the global batch -> mean NLL per scored token."""
        nll_sum, scored = self.strategy.run(functools.partial(self._replica_step, stream="train"),
                                          args=(inputs, targets))
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
        self.first_bad_step.assign(tf.where(bad, self.global_step, self.first_bad_step))
        return loss

    def _replica_step(self, inputs, targets, stream):
        """The distribution glue around `_update`: this replica's rows and the stream's memory in, the
        stream's global memory out.

        Replica r always takes rows r*B/R .. (r+1)*B/R - 1 of the global batch; on one device, all of
        them. Returns (NLL sum, scored tokens) of its rows.
        """
        states, valid = self.streams[stream]
        context = tf.distribute.get_replica_context()
        rows = self.batch_size // context.num_replicas_in_sync
        first = context.replica_id_in_sync_group * rows
        inputs, targets = inputs[first : first + rows], targets[first : first + rows]
        memory = Memory(states[:, first : first + rows], valid)
        scored = tf.reduce_sum(tf.cast(tf.not_equal(targets, data_utils.PAD_ID), tf.float32))
        # Normalised by the global count, the replicas' gradients add up to the global batch's.
        nll_sum, new_memory = self._update(inputs, targets, memory, context.all_reduce(tf.distribute.ReduceOp.SUM, scored),
                                           stream)
        # Rows back in replica order; in float32, as CPU collectives take no bfloat16.
        gathered = context.all_gather(tf.cast(new_memory.states, tf.float32), axis=1)
        states.assign(tf.cast(gathered, states.dtype))
        valid.assign(new_memory.valid_length)
        return nll_sum, scored

    def _update(self, inputs, targets, memory, scored, stream="train"):
        """Forward, backward and the optimizers' updates, the loss being the rows' NLL per `scored` token
        (plus the search's cost term for the logits, search_loss).

        The training stream updates the weights, and the logits too unless they have a held-out stream,
        which updates only them. Returns (the rows' NLL sum, new Memory).
        """
        weights = self.model.weight_variables if stream == "train" else []
        arch = self.model.arch_variables if stream == "heldout" or not self.holdout else []
        capacities = tail_capacities(self.tail_shares, targets.shape.num_elements()) if self.tail_shares else None
        loss_scaled = isinstance(self.weight_optimizer, keras.optimizers.LossScaleOptimizer)
        # The held-out step follows the training step it belongs to, which counted itself already.
        step = self.global_step + (1 if stream == "train" else 0)
        with tf.GradientTape() as tape:
            nll, new_memory = self.model.token_nll(inputs, targets, memory, tau=self.tau_of_step(step),
                                                   training=True, gather_rows=not self.jit_compile,
                                                   tail_capacities=capacities)
            loss = tf.reduce_sum(nll) / tf.maximum(scored, 1.0)
            if arch:
                loss = self.search_loss(loss)
            scaled_loss = self.weight_optimizer.scale_loss(loss) if loss_scaled else loss
        gradients = tape.gradient(scaled_loss, weights + arch)
        arch_gradients = gradients[len(weights):]
        if loss_scaled and arch:  # Unscale by hand; an overflowing step leaves the logits' gradient at 0.
            scale = tf.cast(self.weight_optimizer.dynamic_scale, tf.float32)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in arch_gradients])
            arch_gradients = [tf.where(finite, g / scale, tf.zeros_like(g)) for g in arch_gradients]
        if weights:
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


def make_logger(run, to_file=True):
    """Logs to the console and (if `to_file`) to the run's training_log.log."""
    logger = logging.getLogger(f"train.{run.directory}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        console = logging.StreamHandler(sys.stdout)
        # On a terminal the progress bar holds the current line: clear it, and the bar redraws below.
        console.setFormatter(logging.Formatter(("\r\x1b[K" if sys.stdout.isatty() else "") + "%(asctime)s %(message)s"))
        logger.addHandler(console)
        if to_file:
            file = reliability.LogFile(run.log_path)  # Stops at a full disk instead of a traceback a line.
            file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(file)
    return logger


def log_epoch_time(log, epoch, steps, step_seconds, wall_seconds, validation_seconds, tokens_per_step):
    """Logs an epoch's time in training steps against its wall time, whose excess is validation and bookkeeping."""
    log.info("Epoch %d time: %d training steps took %.1f s (%.1f ms a step, %.0f tokens/s); wall time %.1f s "
             "(%.3fx the steps), validation %.1f s.", epoch, steps, step_seconds, 1000 * step_seconds / max(steps, 1),
             steps * tokens_per_step / max(step_seconds, 1e-9), wall_seconds, wall_seconds / max(step_seconds, 1e-9),
             validation_seconds)


def candidate_costs(model_config, config, seq_len):
    """The cost of attention, dense and identity that the search's cost term charges: the measured
    --cost_table, or each candidate's forward FLOPs per token (at --cost_mem_len where given)."""
    if config.cost_source == "table":
        return list(config.cost_table)
    flops = candidate_flops_per_token(model_config, seq_len, None if config.cost_mem_len == -1 else config.cost_mem_len)
    return [flops[kind] for kind in CANDIDATES]


def heldout_batches(num_batches, fraction):
    """How many of an epoch's last batches form the held-out stream: round(fraction x batches), at least
    one where fraction > 0, and fewer than the batches left to the weights."""
    if not fraction:
        return 0
    heldout = max(1, round(fraction * num_batches))
    if heldout >= num_batches - heldout:
        raise ValueError(f"--arch_holdout={fraction}: {heldout} of the {num_batches} training batches would leave "
                         f"the weights no more; use a smaller fraction or more data.")
    return heldout


class Training:
    """One call of train_and_evaluate: its Trainer, run directory, log, event writers and data, and
    each piece of the loop's periodic work as one method.

    `step` and `batches_done` mirror the trainer's checkpointed counters in Python, read once on
    resuming and advanced by train_step, so that the loop never waits on the device to count.
    Under --strategy=multi_worker every worker runs all of this alike, but only the chief
    (devices.is_chief) writes into the run; the others save their checkpoints into a temporary
    directory (devices.checkpoint_write_dir).
    """

    def __init__(self, model_config, config, data_dir, run_dir, options):
        self.data_dir, self.options = data_dir, options
        self.metadata = data_utils.load_metadata(data_dir)
        precision, precision_reason = devices.resolve_precision(config.precision, options.strategy)
        self.config = config = dataclasses.replace(config, precision=precision)  # config.json records the precision used.
        self.run = runs.Run(run_dir)
        self.run.directory.mkdir(parents=True, exist_ok=True)
        strategy = devices.make_strategy(options.strategy)
        self.chief = devices.is_chief(strategy)
        record = runs.config_record(model_config, config, data_dir, self.metadata)
        self.run.check_or_save_config(record, save=False)
        self.log = make_logger(self.run, to_file=self.chief)
        self.log.info("Precision %s (%s), on %s.", precision, precision_reason,
                      ", ".join(device.name for device in tf.config.list_logical_devices()))
        self.batch_size, self.seq_len = self.metadata["batch_size"], self.metadata["seq_len"]
        train_batches = self.metadata["splits"]["train"]["batches"]
        self.heldout_batches = heldout_batches(train_batches, config.arch_holdout) if model_config.architecture is None \
            else 0
        self.steps_per_epoch = train_batches - self.heldout_batches  # The weights' steps.
        unigram_path = pathlib.Path(data_dir) / UNIGRAM_FILE  # Synthetic datasets have none.
        shares = tail_shares(np.loadtxt(unigram_path), model_config.cutoffs) if unigram_path.is_file() else None
        self.costs = candidate_costs(model_config, config, self.seq_len) if config.cost_weight else None
        self.trainer = Trainer(model_config, config, self.steps_per_epoch, self.batch_size, strategy, tail_shares=shares,
                               candidate_costs=self.costs)
        self.model = self.trainer.model
        self.run.check_or_save_config(record, save=self.chief)  # Only once the run can start.
        self.write_dir = devices.checkpoint_write_dir(self.run, strategy)
        self.best_loss = self.run.best_loss()
        if self.chief:
            checkpoints.remove_unfinished_saves(self.run)
        latest = checkpoints.restore_readable_checkpoint(self.trainer.checkpoint, self.run.checkpoint_dir, self.log,
                                                         self.chief)  # Every worker: the chief's.
        self.latest_manager, self.best_manager = checkpoints.managers(self.trainer.checkpoint, self.write_dir)
        self.step, self.epoch, self.batches_done = self.trainer.counters()
        if latest:
            self.log.info("Resumed from %s at step %d.", latest, self.step)
            if self.chief:
                self.run.forget_pi_after(self.step)
        else:
            self.log_start(record, shares)
        self.writers = {name: tf.summary.create_file_writer(str(self.run.events_dir(name))) if self.chief
                        else tf.summary.create_noop_writer() for name in ("train", "valid")}
        self.interval_seconds = 0.0  # Time in training steps (input included) since the last log, for an honest tokens/s.
        self.validation = None  # The last epoch's, reused for the final results.

    def log_start(self, record, shares):
        """The config, the parameters per part, the FLOPs and each block of a new run."""
        model_config = self.model.config
        self.log.info("Config: %s", json.dumps(record))
        self.log.info("Parameters: %s", count_parameters(self.model))
        rounded = [round(share, 4) for share in shares] if shares else None
        self.log.info("Model FLOPs per token (each adaptive softmax tail for its share %s of tokens): training %.3g, "
                      "inference %.3g", rounded,
                      flops_per_token(model_config, self.seq_len, training=True, tail_shares=shares),
                      flops_per_token(model_config, self.seq_len, tail_shares=shares))
        for line in self.model.summary_lines(self.batch_size, self.seq_len):
            self.log.info("%s", line)
        if self.model.arch_variables:
            self.log_search()

    def log_search(self):
        """How the logits learn: on which batches, from which step, and what the cost term charges."""
        config = self.config
        if self.heldout_batches:
            self.log.info("Search: the last %d of each epoch's %d training batches update only the logits, the other "
                          "%d only the weights.", self.heldout_batches, self.heldout_batches + self.steps_per_epoch,
                          self.steps_per_epoch)
        if self.trainer.frozen_steps:
            self.log.info("Search: the logits stay put for the first %d steps.", self.trainer.frozen_steps)
        if config.cost_weight:
            self.log.info("Search cost: lambda %g x the expected cost; candidate costs (%s) from %s: %s, as shares of the "
                          "costliest architecture: %s.", config.cost_weight, ", ".join(CANDIDATE_NAMES),
                          config.cost_source, [round(cost, 6) for cost in self.costs],
                          [round(float(share), 6) for share in self.trainer.cost_shares.numpy()])

    # The steps of an epoch.

    def epoch_batches(self):
        """The epoch's remaining batches, from where a resumed run stopped; starts the epoch's clocks.

        Each batch's time runs from the end of the previous step's bookkeeping (logging, saving)
        to the end of its own step, input included: `clock` restarts when the loop asks for the next batch.
        """
        if self.batches_done == 0:
            self.trainer.reset_memory()
        self.log.info("Epoch %d/%d from batch %d.", self.epoch + 1, self.config.epochs, self.batches_done)
        # A progress bar only on a terminal: elsewhere (a file, a notebook's log) the log lines say it all.
        self.progress = keras.utils.Progbar(self.steps_per_epoch, unit_name="step") if sys.stdout.isatty() else None
        self.epoch_start, self.first_batch, self.epoch_step_seconds = time.perf_counter(), self.batches_done, 0.0
        self.clock = self.epoch_start
        batches = data_utils.make_dataset(self.data_dir, "train")
        if self.heldout_batches:
            self.heldout_done = self.heldout_due(self.batches_done)
            self.heldout_iterator = iter(batches.skip(self.steps_per_epoch + self.heldout_done))
        weight_batches = batches.take(self.steps_per_epoch).skip(self.batches_done)
        files = data_utils.batch_files(self.data_dir, "train")[: self.steps_per_epoch]  # Named if one is damaged.
        for batch in data_utils.batches_naming_damage(weight_batches, files, self.batches_done, self.step):
            yield batch
            self.clock = time.perf_counter()

    def heldout_due(self, batches_done):
        """Held-out steps due after `batches_done` training steps of an epoch: spread evenly, so that
        both streams end with the epoch."""
        return batches_done * self.heldout_batches // self.steps_per_epoch

    def train_step(self, inputs, targets):
        """One training step, then the held-out step that falls due (unless the logits are frozen)."""
        self.trainer.train_step(inputs, targets)
        if self.heldout_batches and self.heldout_due(self.batches_done + 1) > self.heldout_done:
            heldout = next(self.heldout_iterator)
            if self.step + 1 >= self.trainer.frozen_steps:  # The learning rate of global step step + 1 is not 0.
                self.trainer.heldout_step(*heldout)
            self.heldout_done += 1
        seconds = time.perf_counter() - self.clock
        self.epoch_step_seconds += seconds
        self.interval_seconds += seconds
        self.step += 1
        self.batches_done += 1

    def due(self, every):
        return self.step % every == 0

    def check_finite(self):
        try:
            self.trainer.check_finite()
        except NonFiniteLossError as error:
            last_good = tf.train.latest_checkpoint(self.run.checkpoint_dir) or "none (none was saved)"
            raise NonFiniteLossError(f"{error} Stopped; the last good checkpoint is {last_good}.") from None

    def log_interval(self):
        """Loss, perplexity, tau, learning rate and tokens/s since the last log; a SuperNet's pi too."""
        self.check_finite()
        loss, tokens = self.trainer.take_interval_loss()
        scalars = dict(loss=loss, perplexity=math.exp(min(loss, 50.0)), tau=float(self.trainer.tau_of_step(self.step)),
                       learning_rate=float(self.trainer.learning_rate_of_step(self.step)),
                       tokens_per_second=tokens / max(self.interval_seconds, 1e-9))
        if self.config.cost_weight and self.model.arch_variables:
            scalars["expected_cost"] = float(self.trainer.expected_cost())
        self.interval_seconds = 0.0
        with self.writers["train"].as_default(step=self.step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
        self.log.info("step %d %s", self.step, " ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        if self.model.arch_variables and self.chief:
            self.record_pi(scalars["tau"])
        if self.progress:
            self.progress.update(self.batches_done, [("loss", loss)])

    def record_pi(self, tau):
        """Appends pi to the run's history and logs each block's probabilities to TensorBoard."""
        pi = self.model.arch_probabilities()
        self.run.append_pi(self.step, tau, np.round(pi, 6).tolist())
        with self.writers["train"].as_default(step=self.step):
            for block, row in enumerate(pi):
                for name, value in zip(CANDIDATE_NAMES, row):
                    tf.summary.scalar(f"pi/block_{block}/{name}", value)

    def save(self, manager=None):
        """A checkpoint at this step (by default the latest's), never of a run whose loss went bad."""
        self.check_finite()  # Never let a NaN overwrite the last good checkpoint.
        checkpoints.save_checkpoint(manager or self.latest_manager, self.step)  # On a full disk, one line.
        if not self.chief:
            shutil.rmtree(self.write_dir.parent)

    def pause(self):
        self.save()
        self.log.info("Stopped at step %d as asked; rerun the same command to resume.", self.step)

    def interrupt(self, signum):
        """Saves at this step boundary and raises reliability.Interrupted, which carries the signal's exit status."""
        self.save()
        interrupted = reliability.Interrupted(signum, self.step)
        self.log.info("%s", interrupted)
        raise interrupted

    # The end of an epoch.

    def end_epoch(self):
        """Validates, saves the best so far and the latest checkpoint, and logs the epoch's time."""
        self.trainer.end_epoch()
        self.epoch += 1
        steps = self.batches_done - self.first_batch
        self.batches_done = 0
        validation_start = time.perf_counter()
        self.validation = self.validate()
        validation_seconds = time.perf_counter() - validation_start
        # The best first: a run killed between the two saves resumes before this epoch's end, so it
        # validates this epoch again and finds its best already saved.
        if self.validation["loss"] < self.best_loss:
            self.best_loss = self.validation["loss"]
            self.save(self.best_manager)
            if self.chief:
                self.run.write_best(self.step, self.validation)
        self.save()
        log_epoch_time(self.log, self.epoch, steps, self.epoch_step_seconds, time.perf_counter() - self.epoch_start,
                       validation_seconds, self.batch_size * self.seq_len)

    def score(self, split):
        """evaluate_both_ways over a split: the pi mixture and, for a SuperNet, its argmax architecture."""
        return evaluate_both_ways(self.model, data_utils.make_dataset(self.data_dir, split),
                                  self.metadata["splits"][split], self.batch_size, self.config.jit_compile,
                                  self.options.eval_batches)

    def validate(self):
        results = self.score("valid")
        self.log.info("step %d validation: %s", self.step, json.dumps({k: round(v, 4) for k, v in results.items()}))
        with self.writers["valid"].as_default(step=self.step):
            for key, value in results.items():
                tf.summary.scalar(key, value)
            if self.model.arch_variables and self.chief:
                pi = self.model.arch_probabilities()
                tf.summary.image("pi", tf.image.decode_png(plot_arch.render_pi(pi, f"step {self.step}"))[None])
                self.log_derived_architecture(pi)
        return results

    def log_derived_architecture(self, pi):
        """Logs the architecture the search derives from pi now and the step since which it has, to tell when it settled."""
        history = self.run.pi_history_or_empty() + [dict(step=self.step, pi=pi.tolist())]
        architecture, since = plot_arch.held_since(history)
        self.log.info("step %d derived architecture: --architecture=%s, held since step %d.", self.step, architecture,
                      since)

    # The end of the run.

    def finish(self):
        """Tests, exports and writes results.json; returns the final validation and test results."""
        self.check_finite()
        results = {"valid_" + k: v for k, v in (self.validation or self.validate()).items()}
        test = self.score("test")
        self.log.info("test: %s", json.dumps({k: round(v, 4) for k, v in test.items()}))
        with self.writers["valid"].as_default(step=self.step):
            for key, value in test.items():
                tf.summary.scalar("test_" + key, value)
        results.update({"test_" + k: v for k, v in test.items()})
        if self.model.arch_variables:
            results["derived_architecture"] = self.model.derived_architecture()
            self.log.info("Derived architecture: --architecture=%s", results["derived_architecture"])
        if self.chief:
            checkpoints.export(self.model, self.run, self.data_dir)
            if self.model.arch_variables and self.run.pi_history_path.is_file():
                plot_arch.plot_history(self.run.directory)
                self.log.info("pi.gif and pi.png in %s", self.run.directory)
            self.run.write_results(results)
        for writer in self.writers.values():
            writer.flush()
        return results


def train_and_evaluate(model_config, config, data_dir, run_dir, options=RunOptions(), stop=None):
    """Trains, validating every epoch, then tests and exports. Resumes from run_dir if it holds a checkpoint.

    Returns a dict of the final validation and test results (or {} when stopped early on purpose).
    stop: a reliability.StopSignals; once it has `requested` a stop (SIGTERM, SIGINT), the run saves at
    the next step boundary and raises reliability.Interrupted.
    """
    stop = stop or reliability.StopSignals()
    training = Training(model_config, config, data_dir, run_dir, options)
    while training.epoch < config.epochs:
        for inputs, targets in training.epoch_batches():
            training.train_step(inputs, targets)
            if training.due(options.log_every):
                training.log_interval()
            if training.due(options.checkpoint_every):
                training.save()
            if options.stop_after_steps and training.step >= options.stop_after_steps:
                training.pause()
                return {}
            if stop.requested:
                training.interrupt(stop.requested)
        training.end_epoch()
    return training.finish()


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv):
    flag_values = FLAGS
    if len(argv) > 1:
        sys.exit(f"train.py: error: unexpected arguments {argv[1:]}")
    try:
        metadata = data_utils.load_metadata(flag_values.data_dir)
        model_config, config, options = configs_from_flags(flag_values, metadata["vocab_size"])
        quiet_tensorflow.hide_info_logs(options.verbose)  # Checkpoint saves log at INFO.
        devices.set_intra_op_threads(options.intra_op_threads)  # Before any TF op, as is the strategy:
        strategy = devices.make_strategy(options.strategy)  # MultiWorkerMirroredStrategy refuses to start after any TF op.
        run_dir = pathlib.Path(flag_values.logdir) / flag_values.model_name
        # One training process per run (the chief's lock); SIGTERM and SIGINT stop at a step boundary, except under
        # multi_worker, whose workers would first have to agree on the step; a full disk anywhere ends in one line.
        with (reliability.naming_a_full_disk(run_dir),
              reliability.RunLock(run_dir) if devices.is_chief(strategy) else contextlib.nullcontext(),
              reliability.StopSignals(enabled=options.strategy != "multi_worker") as stop):
            results = train_and_evaluate(model_config, config, flag_values.data_dir, run_dir, options, stop)
    except (ValueError, NonFiniteLossError, checkpoints.CheckpointError, reliability.RunError) as error:  # DataError is a ValueError.
        sys.exit(f"train.py: error: {error}")
    except reliability.Interrupted as interrupted:  # Already logged.
        sys.exit(interrupted.exit_status)
    except tf.errors.DataLossError as error:
        sys.exit(f"train.py: error: {flag_values.data_dir}: a TFRecord file is damaged ({data_utils.error_line(error)}); "
                 f"rebuild it with ./create_tfrecords.sh --overwrite. The run's checkpoints are intact.")
    if results:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    from absl import app

    FLAGS = define_flags()
    app.run(main)
