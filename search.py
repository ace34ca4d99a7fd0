"""The search: everything a SuperNet adds to training, in one object; a fixed architecture trains without one.

A Search holds the architecture logits' optimizer (its schedule and freeze), the held-out stream of
batches and its memory (--arch_holdout), the cost term built once from the config (--cost_weight),
and the record of pi: its history, its TensorBoard images and the architecture it derives.
train.Trainer calls `loss`, `logits_trained_on` and `apply`; train.train_and_evaluate calls the rest.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from config import CANDIDATE_NAMES, CANDIDATES
from costs import candidate_flops_per_token
from optimizers import FusedAdam, learning_rate_schedule


class FrozenFirst(keras.optimizers.schedules.LearningRateSchedule):
    """0 for the first `steps` steps, then `schedule` (a float or a schedule by steps taken)."""

    def __init__(self, schedule, steps):
        self.schedule, self.steps = schedule, steps

    def __call__(self, step):
        rate = self.schedule(step) if callable(self.schedule) else self.schedule
        return tf.where(step < self.steps, 0.0, tf.cast(rate, tf.float32))

    def get_config(self):
        return {"schedule": self.schedule, "steps": self.steps}


def arch_learning_rate_schedule(config, total_steps):
    """The architecture logits' learning rate: a float (constant) or a schedule by steps taken."""
    if config.arch_schedule == "after_warmup":  # Steps 0 .. warmup_steps - 1 take 0.
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([config.warmup_steps - 1], [0.0, config.arch_lr])
    elif config.arch_schedule == "weights":
        schedule = learning_rate_schedule(dataclasses.replace(config, max_lr=config.arch_lr), total_steps)
    else:
        schedule = config.arch_lr
    return FrozenFirst(schedule, config.arch_freeze_steps) if config.arch_freeze_steps else schedule


def steps_frozen(config):
    """Steps during which the logits' learning rate is 0: --arch_freeze_steps, or the warmup under after_warmup."""
    return max(config.arch_freeze_steps, config.warmup_steps if config.arch_schedule == "after_warmup" else 0)


def candidate_costs(model_config, config, seq_len):
    """The cost of attention, dense and identity that the cost term charges: the measured --cost_table,
    or each candidate's forward FLOPs per token (at --cost_mem_len where given)."""
    if config.cost_source == "table":
        return list(config.cost_table)
    flops = candidate_flops_per_token(model_config, seq_len, None if config.cost_mem_len == -1 else config.cost_mem_len)
    return [flops[kind] for kind in CANDIDATES]


def normalised_costs(candidate_costs, num_blocks):
    """Each candidate's cost as a share of num_blocks of the costliest: so the expected cost of the blocks,
    sum_blocks pi . costs, lies in [0, 1], and lambda is in nats per token for going from free to costliest."""
    costs = np.asarray(candidate_costs, np.float64)
    return costs / (num_blocks * costs.max())


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


class Search:
    """The SuperNet's search over `train_batches` batches an epoch of `seq_len` tokens a row.

    Made from the configs alone; `build` then gives it the model, inside the strategy's scope. With
    arch_holdout, an epoch's last `heldout_batches` batches are a stream of their own, with its own
    memory, on which only the logits learn, spread evenly among the weights' steps (`after_train_step`);
    otherwise the logits learn on every training batch beside the weights.
    """

    def __init__(self, model_config, config, train_batches, seq_len):
        self.config = config
        self.heldout_batches = heldout_batches(train_batches, config.arch_holdout)
        self.steps_per_epoch = train_batches - self.heldout_batches  # The weights' steps.
        self.frozen_steps = steps_frozen(config)
        self.costs = candidate_costs(model_config, config, seq_len) if config.cost_weight else None
        self.cost_shares = None if self.costs is None else \
            tf.constant(normalised_costs(self.costs, model_config.num_layers), tf.float32)
        self.model = self.optimizer = None  # Set by build.
        self.streams = {}  # {"heldout": (its memory states, their valid length)} with a held-out stream.
        self.heldout_iterator, self.heldout_done = None, 0  # The epoch's held-out batches, and how many were taken.

    def build(self, model, global_step, batch_size):
        """The logits' optimizer, and the held-out stream's memory; global_step counts the weights' steps,
        which the logits' schedule follows when they learn on held-out steps only."""
        self.model = model
        schedule = arch_learning_rate_schedule(self.config, self.config.epochs * self.steps_per_epoch)
        if self.heldout_batches and callable(schedule):  # The optimizer's own count is of held-out steps only.
            by_step = schedule
            schedule = lambda: by_step(global_step)  # noqa: E731  (Keras takes a callable of no arguments.)
        self.optimizer = FusedAdam(schedule)
        self.optimizer.build(model.arch_variables)
        if self.heldout_batches:
            memory = model.initial_memory(batch_size)
            # Every replica writes the same gathered memory, so the first replica's copy is the value.
            shared = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.streams["heldout"] = (tf.Variable(memory.states, name="heldout_memory_states", **shared),
                                       tf.Variable(memory.valid_length, name="heldout_memory_valid_length", **shared))

    def checkpointed(self):
        """What a checkpoint must hold of the search, by the names that checkpoints have always used."""
        items = dict(arch_optimizer=self.optimizer)
        if self.heldout_batches:
            items.update(heldout_states=self.streams["heldout"][0], heldout_valid=self.streams["heldout"][1])
        return items

    # The step.

    def logits_trained_on(self, stream):
        """The logits learn on the held-out stream where there is one, else on the training stream."""
        return self.model.arch_variables if stream == "heldout" or not self.heldout_batches else []

    def expected_cost(self):
        """sum over blocks and candidates of pi x cost share: the search's cost, in [0, 1] (normalised_costs)."""
        pi = tf.nn.softmax(tf.stack([tf.convert_to_tensor(logits) for logits in self.model.arch_variables]), axis=-1)
        return tf.reduce_sum(pi * self.cost_shares)

    def loss(self, nll_loss, share=1.0):
        """What the logits minimise: the NLL per token plus cost_weight x expected_cost (an additive
        cost term; lambda = 0 is the plain cross-entropy of the original's search). share: the part of
        the step's batch that nll_loss covers (1 / --batch_chunk for a chunk's), which takes that share
        of the term, so that a step's chunks add it once."""
        if self.cost_shares is None:
            return nll_loss
        return nll_loss + share * self.config.cost_weight * self.expected_cost()

    def apply(self, gradients, logits, loss_scale=None):
        """Updates the logits; loss_scale (float16's) is undone by hand, an overflowing step's gradient set to 0."""
        if loss_scale is not None:
            scale = tf.cast(loss_scale, tf.float32)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            gradients = [tf.where(finite, g / scale, tf.zeros_like(g)) for g in gradients]
        self.optimizer.apply(gradients, logits)

    # The held-out stream.

    def start_epoch(self, batches, batches_done):
        """Positions the held-out stream, the last heldout_batches of the epoch's `batches`, after the
        held-out steps due once `batches_done` training steps of the epoch have been taken."""
        if self.heldout_batches:
            self.heldout_done = self.heldout_due(batches_done)
            self.heldout_iterator = iter(batches.skip(self.steps_per_epoch + self.heldout_done))

    def heldout_due(self, batches_done):
        """Held-out steps due after `batches_done` training steps of an epoch: spread evenly, so that
        both streams end with the epoch."""
        return batches_done * self.heldout_batches // self.steps_per_epoch

    def after_train_step(self, trainer, step, batches_done):
        """Takes the held-out batch due after global step `step`, the epoch's `batches_done`-th, and learns
        on it unless the logits are still frozen at that step."""
        if self.heldout_batches and self.heldout_due(batches_done) > self.heldout_done:
            heldout = next(self.heldout_iterator)
            if step >= self.frozen_steps:  # The learning rate of global step `step` is not 0.
                trainer.heldout_step(*heldout)
            self.heldout_done += 1

    # The record.

    def log_start(self, log, weight_batches):
        """How the logits learn: on which batches, from which step, and what the cost term charges."""
        if self.heldout_batches:
            log.info("Search: the last %d of each epoch's %d training batches update only the logits, the other "
                     "%d only the weights.", self.heldout_batches, self.heldout_batches + weight_batches, weight_batches)
        if self.frozen_steps:
            log.info("Search: the logits stay put for the first %d steps.", self.frozen_steps)
        if self.costs is not None:
            log.info("Search cost: lambda %g x the expected cost; candidate costs (%s) from %s: %s, as shares of the "
                     "costliest architecture: %s.", self.config.cost_weight, ", ".join(CANDIDATE_NAMES),
                     self.config.cost_source, [round(cost, 6) for cost in self.costs],
                     [round(float(share), 6) for share in self.cost_shares.numpy()])

    def scalars(self):
        """The search's figures logged beside the loss: the expected cost, where there is a cost term."""
        return {} if self.cost_shares is None else {"expected_cost": float(self.expected_cost())}

    def record_pi(self, run, writer, step, tau):
        """Appends pi to the run's history and logs each block's probabilities to TensorBoard."""
        pi = self.model.arch_probabilities()
        run.append_pi(step, tau, np.round(pi, 6).tolist())
        with writer.as_default(step=step):
            for block, row in enumerate(pi):
                for name, value in zip(CANDIDATE_NAMES, row):
                    tf.summary.scalar(f"pi/block_{block}/{name}", value)

    def record_validation(self, run, writer, step, log):
        """pi as an image in TensorBoard, and the architecture it derives with the step since which it has."""
        import plot_arch  # matplotlib, for a search only.

        pi = self.model.arch_probabilities()
        with writer.as_default(step=step):
            tf.summary.image("pi", tf.image.decode_png(plot_arch.render_pi(pi, f"step {step}"))[None])
        architecture, since = plot_arch.held_since(run.pi_history_or_empty() + [dict(step=step, pi=pi.tolist())])
        log.info("step %d derived architecture: --architecture=%s, held since step %d.", step, architecture, since)

    def finish(self, run, log, chief):
        """The derived architecture for results.json; pi.gif and pi.png drawn from the run's history."""
        architecture = self.model.derived_architecture()
        log.info("Derived architecture: --architecture=%s", architecture)
        if chief and run.pi_history_path.is_file():
            import plot_arch  # matplotlib, for a search only.

            plot_arch.plot_history(run.directory)
            log.info("pi.gif and pi.png in %s", run.directory)
        return {"derived_architecture": architecture}
