"""Trains a PAR Transformer-XL SuperNet (or a fixed architecture) on context-batched TFRecords.

    python train.py --data_dir=data/tfrecords --model_name=base     # or ./base_model.sh

A run lives in logs/<model_name>/ (runs.Run); rerunning the same command resumes it exactly. Here: the Trainer
(the weights, their optimizer, the compiled steps) and train_and_evaluate, the loop around it. A SuperNet's
search is search.Search; scores come from evaluate.py, checkpoints and the export from checkpoints.py, devices
and precision from devices.py. Every field of config's ModelConfig, TrainConfig and RunOptions is a flag.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import contextlib
import dataclasses
import functools
import json
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
import reliability
import runs
from adaptive_softmax import tail_capacities
from config import PAD_ID, UNIGRAM_FILE, RunOptions, configs_from_flags, define_flags
from costs import flops_per_token, tail_shares
from evaluate import evaluate_both_ways
from gumbel import ExponentialTauSchedule
from model import Memory, TransformerXL, count_parameters
from optimizers import learning_rate_schedule, make_weight_optimizer, summed_over_chunks
from search import Search


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf, or diverged; the message names the step."""


class Trainer:
    """The model, the weights' optimizer, the schedules, the compiled steps and all a checkpoint must hold.

    The memory of the previous segment lives in variables, so it survives from one compiled step
    to the next (and into checkpoints) without leaving the device. Under a tf.distribute strategy
    each replica always takes the same rows of the global batch, so every row stays one
    contiguous stream with its memory; the replicas' new memories are gathered back into the
    one global memory after each step, and their NLL sums are added before the perplexity.
    """

    def __init__(self, model_config, config, train_batches, batch_size, seq_len, strategy=None, tail_shares=None,
                 batch_chunk=1):
        """train_batches: an epoch's batches of seq_len tokens a row. A SuperNet's search.Search, which trains its
        logits, is `search`; a fixed architecture has none. tail_shares: each adaptive softmax tail's share of the
        training tokens, from which an XLA step sizes each tail's rows (tail_capacities); without XLA each tail
        scores exactly its own rows. batch_chunk: the chunks a replica's rows run in, their gradients summed."""
        keras.utils.set_random_seed(config.seed)
        search = Search(model_config, config, train_batches, seq_len) if model_config.architecture is None else None
        steps_per_epoch = search.steps_per_epoch if search else train_batches  # The weights' steps.
        self.config, self.search = config, search
        self.divergence_limit = 2 * math.log(model_config.vocab_size)  # Twice uniform guessing's loss.
        self.strategy = strategy or tf.distribute.get_strategy()
        devices.rows_per_replica(batch_size, self.strategy.num_replicas_in_sync, batch_chunk)  # Refuses uneven splits.
        self.batch_size, self.batch_chunk = batch_size, batch_chunk
        self.steps_per_epoch, self.total_steps = steps_per_epoch, config.epochs * steps_per_epoch
        # Indexed by steps taken before a step: the first step uses tau_start, the last tau_end.
        self.tau_schedule = ExponentialTauSchedule(config.tau_start, config.tau_end, max(self.total_steps - 1, 1))
        with self.strategy.scope():
            self.model = TransformerXL(model_config, dtype=devices.dtype_policy(config.precision))
            self.learning_rate_schedule = learning_rate_schedule(config, self.total_steps)
            self.weight_optimizer = make_weight_optimizer(config, self.learning_rate_schedule)
            memory = self.model.initial_memory(batch_size)
            self.model(tf.zeros([batch_size, 1], tf.int32), memory)  # Builds every weight before optimizers see them.
            self.weight_optimizer.build(self.model.weight_variables)
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
            if search:
                search.build(self.model, self.global_step, batch_size)
        single_device = self.strategy is tf.distribute.get_strategy() or self.strategy.num_replicas_in_sync == 1
        # XLA compiles the whole step on one device; across replicas the collectives stay outside it.
        self.jit_compile = devices.use_xla(config.jit_compile) and single_device
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile)
        self.heldout_step = tf.function(self._heldout_step, jit_compile=self.jit_compile)
        self.tail_shares = tail_shares if self.jit_compile and model_config.cutoffs else None
        # Keras 3 layers are not all tracked by tf.train.Checkpoint, so the model's variables
        # (weights, arch logits, RNG states) are saved as one ordered list.
        self.checkpoint = tf.train.Checkpoint(
            model_variables=list(self.model.variables), weight_optimizer=self.weight_optimizer,
            memory_states=self.memory_states, memory_valid=self.memory_valid, global_step=self.global_step,
            epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, nll_sum=self.nll_sum, token_count=self.token_count,
            **(search.checkpointed() if search else {}))

    def counters(self):
        """(steps taken, epochs done, batches done in the current epoch), read from their variables: steps
        taken, not the optimizer's count, which lags it when float16 loss scaling skips a step."""
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
        """{stream: (its memory states, their valid length)}: "train", and the search's "heldout" where it has one."""
        return {"train": (self.memory_states, self.memory_valid), **(self.search.streams if self.search else {})}

    def _global_step(self, inputs, targets, stream):
        """inputs, targets [B, T] of the global batch of a stream -> (its NLL sum, its scored tokens)."""
        nll_sum, scored = self.strategy.run(functools.partial(self._replica_step, stream=stream), args=(inputs, targets))
        return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, nll_sum, axis=None),
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, scored, axis=None))

    def _heldout_step(self, inputs, targets):
        """A batch of the held-out stream: updates only the logits, at the tau of the training step just taken.
        Returns the mean NLL per scored token."""
        nll_sum, scored = self._global_step(inputs, targets, "heldout")
        return nll_sum / tf.maximum(scored, 1.0)

    def _train_step(self, inputs, targets):
        """A batch of the training stream -> mean NLL per scored token."""
        nll_sum, scored = self._global_step(inputs, targets, "train")
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
        scored = tf.reduce_sum(tf.cast(tf.not_equal(targets, PAD_ID), tf.float32))
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
        (plus the search's cost term for the logits, search.Search.loss), gradients summed over --batch_chunk chunks.

        The training stream updates the weights, and the search's logits where it trains them on this
        stream (search.Search.logits_trained_on). Returns (the rows' NLL sum, new Memory).
        """
        weights = self.model.weight_variables if stream == "train" else []
        arch = self.search.logits_trained_on(stream) if self.search else []
        loss_scaled = isinstance(self.weight_optimizer, keras.optimizers.LossScaleOptimizer)
        # The held-out step follows the training step it belongs to, which counted itself already.
        tau = self.tau_of_step(self.global_step + (1 if stream == "train" else 0))

        def chunk_step(inputs, targets, memory):
            capacities = tail_capacities(self.tail_shares, targets.shape.num_elements()) if self.tail_shares else None
            with tf.GradientTape() as tape:
                nll, new_memory = self.model.token_nll(inputs, targets, memory, tau=tau, training=True,
                                                       gather_rows=not self.jit_compile, tail_capacities=capacities)
                loss = tf.reduce_sum(nll) / tf.maximum(scored, 1.0)
                loss = self.search.loss(loss, share=1 / self.batch_chunk) if arch else loss
                scaled_loss = self.weight_optimizer.scale_loss(loss) if loss_scaled else loss
            return tf.reduce_sum(nll), new_memory, tape.gradient(scaled_loss, weights + arch)
        nll_sum, new_memory, gradients = summed_over_chunks(chunk_step, self.batch_chunk, inputs, targets, memory,
                                                            self.model.per_step_sample_seeds())
        if weights:
            self.weight_optimizer.apply(gradients[: len(weights)], weights)
        if arch:
            self.search.apply(gradients[len(weights):], arch, self.weight_optimizer.dynamic_scale if loss_scaled else None)
        return nll_sum, new_memory

    def check_finite(self, checkpoint_dir=None):
        """Raises NonFiniteLossError if any step since the start had a NaN, inf or diverged loss, naming the
        last good checkpoint in checkpoint_dir where given."""
        bad_step = int(self.first_bad_step.numpy())
        if bad_step >= 0:
            last_good = checkpoint_dir and (tf.train.latest_checkpoint(checkpoint_dir) or "none (none was saved)")
            raise NonFiniteLossError(f"The training loss became NaN or inf, or diverged above "
                                     f"{self.divergence_limit:.2f} (twice ln(vocab_size)), at step {bad_step}."
                                     + (f" Stopped; the last good checkpoint is {last_good}." if last_good else ""))

    def take_interval_loss(self):
        """Mean NLL per scored token since the last call, and that count; resets both."""
        nll, count = float(self.nll_sum.numpy()), float(self.token_count.numpy())
        self.nll_sum.assign(0.0)
        self.token_count.assign(0.0)
        return nll / max(count, 1.0), count


def log_start(log, trainer, record, shares, batch_size, seq_len):
    """The config, the parameters per part, the FLOPs and each block of a new run, and how a search learns."""
    model = trainer.model
    log.info("Config: %s", json.dumps(record))
    log.info("Parameters: %s", count_parameters(model))
    log.info("Model FLOPs per token (each adaptive softmax tail for its share %s of tokens): training %.3g, "
             "inference %.3g", [round(share, 4) for share in shares] if shares else None,
             flops_per_token(model.config, seq_len, training=True, tail_shares=shares),
             flops_per_token(model.config, seq_len, tail_shares=shares))
    for line in model.summary_lines(batch_size, seq_len):
        log.info("%s", line)
    if trainer.search:
        trainer.search.log_start(log, trainer.steps_per_epoch)


def log_interval(log, writer, trainer, step, seconds):
    """Loss, perplexity, learning rate and tokens/s since the last log (and a search's tau and figures);
    returns the loss."""
    loss, tokens = trainer.take_interval_loss()
    scalars = dict(loss=loss, perplexity=math.exp(min(loss, 50.0)),
                   learning_rate=float(trainer.learning_rate_of_step(step)), tokens_per_second=tokens / max(seconds, 1e-9))
    if trainer.search:  # tau only samples a SuperNet's blocks.
        scalars.update(tau=float(trainer.tau_of_step(step)), **trainer.search.scalars())
    write_scalars(writer, step, scalars)
    log.info("step %d %s", step, " ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    return loss


def write_scalars(writer, step, scalars, prefix=""):
    with writer.as_default(step=step):
        for key, value in scalars.items():
            tf.summary.scalar(prefix + key, value)


def log_epoch_time(log, epoch, steps, step_seconds, wall_seconds, validation_seconds, tokens_per_step):
    """Logs an epoch's time in training steps against its wall time, whose excess is validation and bookkeeping."""
    log.info("Epoch %d time: %d training steps took %.1f s (%.1f ms a step, %.0f tokens/s); wall time %.1f s "
             "(%.3fx the steps), validation %.1f s.", epoch, steps, step_seconds, 1000 * step_seconds / max(steps, 1),
             steps * tokens_per_step / max(step_seconds, 1e-9), wall_seconds, wall_seconds / max(step_seconds, 1e-9),
             validation_seconds)


def score(trainer, data_dir, metadata, split, options, log, writer, step, stop):
    """evaluate_both_ways over a split (the pi mixture and, for a SuperNet, its argmax architecture), logged."""
    results = evaluate_both_ways(trainer.model, data_utils.split_batches(data_dir, split), metadata["splits"][split],
                                 metadata["batch_size"], trainer.config.jit_compile, options.eval_batches,
                                 functools.partial(stop.check, step))
    rounded = json.dumps({k: round(v, 4) for k, v in results.items()})
    log.info("step %d validation: %s", step, rounded) if split == "valid" else log.info("%s: %s", split, rounded)
    write_scalars(writer, step, results, prefix="" if split == "valid" else split + "_")
    return results


def save(trainer, manager, step, run, write_dir, chief):
    """A checkpoint at this step, never of a run whose loss went bad."""
    trainer.check_finite(run.checkpoint_dir)  # Never let a NaN overwrite the last good checkpoint.
    checkpoints.save_checkpoint(manager, step)  # On a full disk, one line.
    if not chief:
        shutil.rmtree(write_dir.parent)


def train_and_evaluate(model_config, config, data_dir, run_dir, options=RunOptions(), stop=None, strategy=None,
                       metadata=None):
    """Trains, validating every epoch, then tests and exports. Resumes from run_dir if it holds a checkpoint.

    Returns a dict of the final validation and test results (or {} when stopped early on purpose).
    stop: a reliability.StopSignals; once it has `requested` a stop (SIGTERM, SIGINT), the run saves what it must
    and raises reliability.Interrupted, within a step or an evaluation batch. strategy and metadata: main's, made and
    read once; by default options.strategy's and data_dir's. Under --strategy=multi_worker every worker
    runs all of this alike, but only the chief (devices.is_chief) writes into the run; the others save
    their checkpoints into a temporary directory (devices.checkpoint_write_dir).
    """
    stop, strategy = stop or reliability.StopSignals(), strategy or devices.make_strategy(options.strategy)
    metadata = metadata or data_utils.load_metadata(data_dir)
    precision, precision_reason = devices.resolve_precision(config.precision, options.strategy)
    config = dataclasses.replace(config, precision=precision)  # config.json records the precision used.
    run, chief = runs.Run(run_dir), devices.is_chief(strategy)
    run.directory.mkdir(parents=True, exist_ok=True)
    record = runs.config_record(model_config, config, data_dir, metadata)
    run.check_or_save_config(record, save=False)
    log = runs.make_logger(run, to_file=chief)
    log.info("Precision %s (%s), on %s; --batch_chunk=%d.", precision, precision_reason,
             ", ".join(device.name for device in tf.config.list_logical_devices()), options.batch_chunk)
    batch_size, seq_len, train_batches = metadata["batch_size"], metadata["seq_len"], metadata["splits"]["train"]["batches"]
    unigram_path = pathlib.Path(data_dir) / UNIGRAM_FILE  # Synthetic datasets have none.
    shares = tail_shares(np.loadtxt(unigram_path), model_config.cutoffs) if unigram_path.is_file() else None
    trainer = Trainer(model_config, config, train_batches, batch_size, seq_len, strategy, shares, options.batch_chunk)
    search = trainer.search
    run.check_or_save_config(record, save=chief)  # Only once the run can start.
    write_dir = devices.checkpoint_write_dir(run, strategy)
    if chief:
        checkpoints.remove_unfinished_saves(run)
    latest = checkpoints.restore_readable_checkpoint(trainer.checkpoint, run.checkpoint_dir, log, chief)  # The chief's.
    latest_manager, best_manager = checkpoints.managers(trainer.checkpoint, write_dir)
    # Python's copies of the checkpointed counters, so that the loop never waits on the device to count.
    step, epoch, batches_done = trainer.counters()
    if latest:
        log.info("Resumed from %s at step %d.", latest, step)
        if chief:
            run.forget_pi_after(step)
    else:
        log_start(log, trainer, record, shares, batch_size, seq_len)
    writers = {name: tf.summary.create_file_writer(str(run.events_dir(name))) if chief else tf.summary.create_noop_writer()
               for name in ("train", "valid")}
    best_loss, validation, interval_seconds = run.best_loss(), None, 0.0
    while epoch < config.epochs:
        if batches_done == 0:
            trainer.reset_memory()
        log.info("Epoch %d/%d from batch %d.", epoch + 1, config.epochs, batches_done)
        # A progress bar only on a terminal: elsewhere (a file, a notebook's log) the log lines say it all.
        progress = keras.utils.Progbar(trainer.steps_per_epoch, unit_name="step") if sys.stdout.isatty() else None
        batches = data_utils.make_dataset(data_dir, "train")
        if search:
            search.start_epoch(batches, batches_done)
        files = data_utils.batch_files(data_dir, "train")[: trainer.steps_per_epoch]  # Named if one is damaged.
        weight_batches = batches.take(trainer.steps_per_epoch).skip(batches_done)
        # Each step's time runs from the end of the previous step's bookkeeping (logging, saving) to the end of
        # its own step, input included: the clock restarts when the loop asks for the next batch.
        epoch_start = clock = time.perf_counter()
        first_batch, epoch_seconds = batches_done, 0.0
        for inputs, targets in data_utils.batches_naming_damage(weight_batches, files, batches_done, step):
            trainer.train_step(inputs, targets)
            step, batches_done = step + 1, batches_done + 1
            if search:
                search.after_train_step(trainer, step, batches_done)
            seconds = time.perf_counter() - clock
            epoch_seconds, interval_seconds = epoch_seconds + seconds, interval_seconds + seconds
            if step % options.log_every == 0:
                trainer.check_finite(run.checkpoint_dir)
                loss = log_interval(log, writers["train"], trainer, step, interval_seconds)
                interval_seconds = 0.0
                if search and chief:
                    search.record_pi(run, writers["train"], step, float(trainer.tau_of_step(step)))
                if progress:
                    progress.update(batches_done, [("loss", loss)])
            if step % options.checkpoint_every == 0:
                save(trainer, latest_manager, step, run, write_dir, chief)
            if stop.at_step_boundary() or options.stop_after_steps and step >= options.stop_after_steps:
                save(trainer, latest_manager, step, run, write_dir, chief)
                stop.check(step)
                log.info("Stopped at step %d as asked; rerun the same command to resume.", step)
                return {}
            clock = time.perf_counter()
        epoch, steps, batches_done = epoch + 1, batches_done - first_batch, 0
        validation_start = time.perf_counter()
        try:
            validation = score(trainer, data_dir, metadata, "valid", options, log, writers["valid"], step, stop)
        except reliability.Interrupted:  # Saved with the epoch's batches done, not the epoch: the rerun validates it.
            save(trainer, latest_manager, step, run, write_dir, chief)
            raise
        if search and chief:
            search.record_validation(run, writers["valid"], step, log)
        validation_seconds = time.perf_counter() - validation_start
        trainer.end_epoch()
        # The best first: a run killed between the two saves resumes before this epoch's end, so it
        # validates this epoch again and finds its best already saved.
        if validation["loss"] < best_loss:
            best_loss = validation["loss"]
            save(trainer, best_manager, step, run, write_dir, chief)
            if chief:
                run.write_best(step, validation)
        save(trainer, latest_manager, step, run, write_dir, chief)
        log_epoch_time(log, epoch, steps, epoch_seconds, time.perf_counter() - epoch_start, validation_seconds,
                       batch_size * seq_len)
    trainer.check_finite(run.checkpoint_dir)
    validation = validation or score(trainer, data_dir, metadata, "valid", options, log, writers["valid"], step, stop)
    test = score(trainer, data_dir, metadata, "test", options, log, writers["valid"], step, stop)
    with stop.abandoning(step):  # What a stop breaks off here is written whole or not at all, and the rerun writes it.
        results = {**{"valid_" + k: v for k, v in validation.items()}, **{"test_" + k: v for k, v in test.items()},
                   **(search.finish(run, log, chief) if search else {})}
        if chief:
            checkpoints.export(trainer.model, run, data_dir)
            run.write_results(results)
    for writer in writers.values():
        writer.flush()
    return results


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv):
    flag_values = FLAGS
    if len(argv) > 1:
        sys.exit(f"train.py: error: unexpected arguments {argv[1:]}")
    try:
        run_dir = reliability.check_writable(pathlib.Path(flag_values.logdir) / flag_values.model_name, "--logdir")
        metadata = data_utils.load_metadata(flag_values.data_dir)
        model_config, config, options = configs_from_flags(flag_values, metadata["vocab_size"])
        quiet_tensorflow.hide_info_logs(options.verbose)  # Checkpoint saves log at INFO.
        devices.set_intra_op_threads(options.intra_op_threads)  # Before any TF op, as is the strategy:
        strategy = devices.make_strategy(options.strategy)  # MultiWorkerMirroredStrategy refuses to start after any TF op.
        # One training process per run (the chief's lock); SIGTERM and SIGINT stop the run, under multi_worker SIGTERM
        # on every worker at one step (ClusterStopSignals); a full disk anywhere ends in one line.
        with (reliability.naming_a_full_disk(run_dir),
              reliability.RunLock(run_dir) if devices.is_chief(strategy) else contextlib.nullcontext(),
              reliability.ClusterStopSignals(strategy) if options.strategy == "multi_worker" else
              reliability.StopSignals() as stop):
            results = train_and_evaluate(model_config, config, flag_values.data_dir, run_dir, options, stop, strategy,
                                         metadata)
    except (ValueError, NonFiniteLossError, checkpoints.CheckpointError, reliability.RunError) as error:  # DataError is a ValueError.
        sys.exit(f"train.py: error: {error}")
    except reliability.Interrupted as interrupted:
        runs.make_logger(runs.Run(run_dir)).info("%s", interrupted)  # The run's logger, made by train_and_evaluate.
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
