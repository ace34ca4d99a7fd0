"""Trains a PAR Transformer-XL SuperNet (or a fixed architecture) on context-batched TFRecords.

    python train.py --data_dir=data/tfrecords --model_name=base     # or ./base_model.sh

Everything a run writes lives in logs/<model_name>/ (runs.Run lists it). Rerunning the same command
resumes from the latest checkpoint exactly: same step, lr, tau, memory, RNG and next batch.

Here: the Trainer (the model, its optimizers and the compiled step) and the loop around it.
Validation and test scores come from evaluate.py; checkpoints and the export from checkpoints.py;
threads, XLA, precision and the tf.distribute strategy from devices.py. Every field of
config.ModelConfig, TrainConfig and RunOptions is a flag, with its comment as help.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import dataclasses
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
import runs
from adaptive_softmax import tail_capacities
from config import CANDIDATE_NAMES, ModelConfig, RunOptions, TrainConfig, configs_from_flags
from config import define_flags as define_setting_flags
from costs import flops_per_token, tail_shares
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
        self.first_bad_step.assign(tf.where(bad, self.global_step, self.first_bad_step))
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
            file = logging.FileHandler(run.log_path)
            file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(file)
    return logger


def log_epoch_time(log, epoch, steps, step_seconds, wall_seconds, validation_seconds, tokens_per_step):
    """Logs an epoch's time in training steps against its wall time, whose excess is validation and bookkeeping."""
    log.info("Epoch %d time: %d training steps took %.1f s (%.1f ms a step, %.0f tokens/s); wall time %.1f s "
             "(%.3fx the steps), validation %.1f s.", epoch, steps, step_seconds, 1000 * step_seconds / max(steps, 1),
             steps * tokens_per_step / max(step_seconds, 1e-9), wall_seconds, wall_seconds / max(step_seconds, 1e-9),
             validation_seconds)


def check_precision_for_strategy(precision, strategy_name):
    if strategy_name == "multi_worker" and precision == "bfloat16" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("--strategy=multi_worker with bfloat16 on CPUs: TensorFlow's CPU collectives take no "
                         "bfloat16 variables; pass --precision=float32.")


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
        precision, precision_reason = devices.resolve_precision(config.precision)
        self.config = config = dataclasses.replace(config, precision=precision)  # config.json records the precision used.
        check_precision_for_strategy(precision, options.strategy)
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
        self.steps_per_epoch = self.metadata["splits"]["train"]["batches"]
        unigram_path = pathlib.Path(data_dir) / data_utils.UNIGRAM_FILE  # Synthetic datasets have none.
        shares = tail_shares(np.loadtxt(unigram_path), model_config.cutoffs) if unigram_path.is_file() else None
        self.trainer = Trainer(model_config, config, self.steps_per_epoch, self.batch_size, strategy, tail_shares=shares)
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
        for batch in data_utils.make_dataset(self.data_dir, "train").skip(self.batches_done):
            yield batch
            self.clock = time.perf_counter()

    def train_step(self, inputs, targets):
        self.trainer.train_step(inputs, targets)
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
        (manager or self.latest_manager).save(checkpoint_number=self.step)
        if not self.chief:
            shutil.rmtree(self.write_dir.parent)

    def pause(self):
        self.save()
        self.log.info("Stopped at step %d as asked; rerun the same command to resume.", self.step)

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
                                  self.metadata["splits"][split]["words"], self.batch_size, self.config.jit_compile,
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


def train_and_evaluate(model_config, config, data_dir, run_dir, options=RunOptions()):
    """Trains, validating every epoch, then tests and exports. Resumes from run_dir if it holds a checkpoint.

    Returns a dict of the final validation and test results (or {} when stopped early on purpose).
    """
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
        training.end_epoch()
    return training.finish()


# ---------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values=None):
    """The flags of train.py (and bench.py), made from the dataclasses in config.py."""
    return define_setting_flags(data_utils.DEFAULT_DATA_DIR, flag_values)


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
    except (ValueError, NonFiniteLossError, checkpoints.CheckpointError) as error:  # DataError is a ValueError.
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
