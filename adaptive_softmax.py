"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Ids are ranked by frequency, so a few frequent ids (the shortlist) cover most tokens. The head
scores the shortlist plus one logit per tail cluster; tail cluster i scores its own ids from a
projection of the hidden state that is proj_factor**i times narrower. Then

    log p(id) = head_log_softmax[id]                                   for id in the shortlist
    log p(id) = head_log_softmax[cluster i] + tail_i_log_softmax[id]   for id in tail cluster i

Training never builds a vocabulary-sized softmax: every token takes the head's log-probability,
and each tail contributes only its label's logit minus the tail's logsumexp. Whether a tail runs
on every row or only on the rows whose label lies in it depends on XLA (see AdaptiveSoftmax).
"""
import math

import keras
import tensorflow as tf

from config import check_cutoffs
from costs import tail_projection_dims


def tail_capacities(shares, rows, headroom=1.25, minimum=8):
    """Rows each tail cluster scores in a step compiled with XLA (AdaptiveSoftmax.call's tail_capacities):
    ceil(share * rows * headroom), at least `minimum`, at most `rows`.

    The headroom absorbs the batch-to-batch spread of a tail's token count, so overflow (every row,
    exact but without the saving) stays rare. WikiText-2's 2699 training batches of 1024 tokens hold
    239 +- 15 and 111 +- 11 tail tokens; at 1.25 (capacities 299 and 140) the first tail never
    overflowed and the second did in 0.56% of them, against 5% at 1.15. Multiplying by the headroom
    makes it wider than needed for larger batches, whose relative spread is smaller.
    """
    if rows < 1 or headroom < 1 or minimum < 1:
        raise ValueError(f"rows={rows}, headroom={headroom}, minimum={minimum}: rows and minimum must be at least 1 "
                         "and headroom at least 1, or typical batches would overflow.")
    if any(not 0 <= share <= 1 for share in shares):
        raise ValueError(f"shares={list(shares)} must be fractions of tokens, in [0, 1].")
    return tuple(min(rows, max(minimum, math.ceil(share * rows * headroom))) for share in shares)


class AdaptiveSoftmax(keras.layers.Layer):
    """Output layer: per-token NLL for training, full log-probabilities for evaluation and sampling.

    Args:
      vocab_size: number of ids, padding included.
      cutoffs: ids where the shortlist and each tail cluster end, without vocab_size; () is a
        plain softmax.
      proj_factor / proj_dims: tail projection widths (see tail_projection_dims).
      pad_id: labels equal to it score 0 and pass no gradient.
      tied_embedding: optional Embedding layer [vocab_size, D] whose first shortlist rows serve as
        the shortlist's output weights (all rows for a plain softmax). Tails stay untied: their
        narrower projections do not match the embedding's width. Not part of get_config: the
        owner passes it again.

    Logits are cast to float32 before any softmax, whatever the compute dtype.

    Which rows run each tail (`gather_rows` in `call`). Grave et al. run tail i only on the rows
    whose label lies in it: a tf.where, a gather and a scatter. XLA compiles that by padding the
    data-dependent row count to its bound, but unusably slowly: for 64 tokens on 2 CPU cores,
    2 to over 7 minutes to compile and 16 s a step. So the default runs every tail's narrow matmul
    on every row and keeps its label's entry, with static shapes throughout: 185k multiply-adds
    per token at d_model 128, cutoffs 250/2500 and vocab 12000, against 58k for the gather at
    WikiText-2's unigram frequencies and 1.5M for a full softmax, and every row pays for each
    tail's softmax. Forward and backward of this layer alone, 1024 tokens, 2 CPU cores: every row
    20-25 ms with XLA and 40-44 ms without; gathered rows 6 ms without XLA; full softmax 44 ms with
    XLA. Hence gather_rows=True for a step that is not compiled with XLA, False (the default) for
    one that is.

    `tail_capacities` gives a step compiled with XLA most of the gather's saving with static shapes:
    tail i scores a fixed number of rows (see the tail_capacities function), the rows whose label
    lies in it padded with others whose values are dropped. A batch with more such rows than that
    overflows: tf.cond runs that tail on every row instead, so the loss and gradients stay exact.
    At WikiText-2's shares, capacities 299 and 140 of 1024 rows: 65k multiply-adds per token, and
    13 ms a step with XLA against 64 ms for every row, timed side by side (docs/scaling.md).
    """

    def __init__(self, vocab_size, cutoffs=(), proj_factor=4, proj_dims=None, pad_id=0, tied_embedding=None, **kwargs):
        super().__init__(**kwargs)
        # A getter, not the layer: Keras would track the embedding as a sublayer and count its weights twice.
        self._tied_weights = (lambda: tied_embedding.embeddings) if tied_embedding is not None else None
        self.vocab_size = vocab_size
        self.cutoffs = check_cutoffs(cutoffs, vocab_size)
        self.proj_factor = proj_factor
        self.proj_dims = None if proj_dims is None else list(proj_dims)
        self.pad_id = pad_id
        bounds = self.cutoffs + [vocab_size]
        self.shortlist_size = bounds[0]
        self.clusters = list(zip(bounds[:-1], bounds[1:]))  # [start, stop) of each tail cluster.

    def build(self, input_shape):
        d_model = input_shape[-1]
        head_size = self.shortlist_size + len(self.clusters)
        init = keras.initializers.RandomNormal(stddev=0.02)
        own_columns = len(self.clusters) if self._tied_weights else head_size
        self.head_kernel = self.add_weight((d_model, own_columns), init, name="head_kernel")
        self.head_bias = self.add_weight((head_size,), "zeros", name="head_bias")
        self.tail_projections, self.tail_kernels, self.tail_biases = [], [], []
        dims = tail_projection_dims(d_model, len(self.clusters), self.proj_factor, self.proj_dims)
        for i, ((start, stop), dim) in enumerate(zip(self.clusters, dims)):
            self.tail_projections.append(self.add_weight((d_model, dim), init, name=f"tail_{i}_projection"))
            self.tail_kernels.append(self.add_weight((dim, stop - start), init, name=f"tail_{i}_kernel"))
            self.tail_biases.append(self.add_weight((stop - start,), "zeros", name=f"tail_{i}_bias"))

    def _affine(self, inputs, kernel, bias=None):
        """inputs @ kernel (+ bias) in the compute dtype; log_probs is no `call`, so Keras does not autocast."""
        outputs = tf.matmul(tf.cast(inputs, self.compute_dtype), tf.cast(kernel, self.compute_dtype))
        return outputs if bias is None else outputs + tf.cast(bias, self.compute_dtype)

    def _head_log_probs(self, hidden):
        """[..., D] -> [..., shortlist + num_tails] float32."""
        logits = self._affine(hidden, self.head_kernel)
        if self._tied_weights:
            shortlist_weights = tf.transpose(self._tied_weights()[: self.shortlist_size])  # [D, S]
            logits = tf.concat([self._affine(hidden, shortlist_weights), logits], axis=-1)
        return tf.nn.log_softmax(tf.cast(logits + tf.cast(self.head_bias, logits.dtype), tf.float32))

    def _tail_weights(self, i):
        """Tail cluster i's (projection, kernel, bias)."""
        return self.tail_projections[i], self.tail_kernels[i], self.tail_biases[i]

    def _tail_logits(self, hidden, projection, kernel, bias):
        """[..., D] -> [..., size of the tail cluster] float32 logits, from the cluster's weights."""
        return tf.cast(self._affine(self._affine(hidden, projection), kernel, bias), tf.float32)

    def _tail_label_log_prob(self, hidden, labels, i, weights=None):
        """hidden [..., D], labels [...] -> log p(label | tail cluster i) [...] float32.

        The label's logit minus the tail's logsumexp: its log-softmax entry, without materialising
        the log-softmax. Labels outside the cluster are clipped into it, so the value stays finite.
        weights: the tail's (projection, kernel, bias) as tensors; None reads the layer's own.
        """
        start, stop = self.clusters[i]
        tail_logits = self._tail_logits(hidden, *(weights or self._tail_weights(i)))  # [..., stop - start]
        local = tf.clip_by_value(labels - start, 0, stop - start - 1)  # [...]
        label_logit = tf.gather(tail_logits, local, batch_dims=len(local.shape))
        return label_logit - tf.reduce_logsumexp(tail_logits, axis=-1)

    def _capacity_tail_log_prob(self, hidden, labels, in_cluster, i, capacity):
        """hidden [B, T, D], labels and in_cluster [B, T] -> log p(label | tail cluster i) [B, T]
        float32, exact where in_cluster; elsewhere finite values for the caller to drop.

        Scores `capacity` rows with static shapes, so XLA compiles it quickly, unless more rows than
        that lie in the cluster: then every row. A tf.cond picks the branch in the forward pass, and
        another in the backward pass, which recomputes the branch's forward. Differentiating the
        forward tf.cond instead would pass its intermediates, whose shapes differ between the
        branches, into the backward pass; XLA then needs the weights as compile-time constants
        and recompiles the whole training step at every step.
        """
        flat_hidden = tf.reshape(hidden, [-1, hidden.shape[-1]])  # [N, D]
        flat_labels, flat_in_cluster = tf.reshape(labels, [-1]), tf.reshape(in_cluster, [-1])  # [N]
        fits = tf.reduce_sum(tf.cast(flat_in_cluster, tf.int32)) <= capacity
        # The top `capacity` of the 0/1 mask: distinct rows, every in-cluster one first when they fit.
        _, rows = tf.math.top_k(tf.cast(flat_in_cluster, tf.float32), k=capacity)  # [C]

        def gathered(inputs, weights):
            log_prob = self._tail_label_log_prob(tf.gather(inputs, rows), tf.gather(flat_labels, rows), i, weights)
            # [N]: padding slots land on rows outside the cluster, which the caller drops.
            return tf.scatter_nd(rows[:, None], log_prob, tf.shape(flat_labels))

        def every_row(inputs, weights):
            return self._tail_label_log_prob(inputs, flat_labels, i, weights)  # [N]

        @tf.custom_gradient
        def tail_log_prob(inputs, *weights):
            def gradient(upstream):
                def gradients_of(branch):
                    with tf.GradientTape() as tape:
                        tape.watch([inputs, *weights])
                        value = branch(inputs, weights)
                    return [tf.convert_to_tensor(g) for g in
                            tape.gradient(value, [inputs, *weights], output_gradients=upstream)]
                return tf.cond(fits, lambda: gradients_of(gathered), lambda: gradients_of(every_row))
            return tf.cond(fits, lambda: gathered(inputs, weights), lambda: every_row(inputs, weights)), gradient

        weights = [tf.convert_to_tensor(w) for w in self._tail_weights(i)]
        return tf.reshape(tail_log_prob(flat_hidden, *weights), tf.shape(labels))

    def _check_capacities(self, tail_capacities, labels, gather_rows):
        """One capacity per tail for static [B, T] labels; capacities of at least B * T become None (every row)."""
        if gather_rows:
            raise ValueError(f"gather_rows=True and tail_capacities={tail_capacities} both choose the rows a tail "
                             "scores; give one (gather_rows without XLA, tail_capacities with it).")
        rows = labels.shape.num_elements()
        if rows is None:
            raise ValueError(f"tail_capacities needs labels of static shape, got {labels.shape}: XLA needs static "
                             "shapes anyway.")
        if len(tail_capacities) != len(self.clusters) or any(int(c) != c or c < 1 for c in tail_capacities):
            raise ValueError(f"tail_capacities={tail_capacities} must give one positive integer per tail cluster "
                             f"({len(self.clusters)}).")
        return [int(c) if c < rows else None for c in tail_capacities]

    def call(self, hidden, labels, gather_rows=False, tail_capacities=None):
        """hidden [B, T, D], labels [B, T] int -> nll [B, T] float32, 0 where labels == pad_id.

        gather_rows: run each tail only on the rows whose label lies in it; faster, but only
        without XLA (see the class docstring).
        tail_capacities: the number of rows each tail scores (see the tail_capacities function),
        for a step compiled with XLA; exact whatever the batch. None runs every tail on every row.
        """
        labels = tf.cast(labels, tf.int32)
        capacities = [None] * len(self.clusters)
        if tail_capacities is not None:
            capacities = self._check_capacities(tail_capacities, labels, gather_rows)
        head = self._head_log_probs(hidden)  # [B, T, S + C]
        label_log_prob = tf.gather(head, tf.minimum(labels, self.shortlist_size - 1), batch_dims=2)  # [B, T]
        for i, ((start, stop), capacity) in enumerate(zip(self.clusters, capacities)):
            cluster_log_prob = head[..., self.shortlist_size + i]  # [B, T]
            in_cluster = (labels >= start) & (labels < stop)  # [B, T]
            if gather_rows:
                rows = tf.where(in_cluster)  # [N_i, 2]: the (b, t) of each label in cluster i.
                log_prob = tf.gather_nd(cluster_log_prob, rows) + self._tail_label_log_prob(
                    tf.gather_nd(hidden, rows), tf.gather_nd(labels, rows), i)  # [N_i]
                label_log_prob = tf.tensor_scatter_nd_update(label_log_prob, rows, log_prob)
                continue
            if capacity is None:
                tail_log_prob = self._tail_label_log_prob(hidden, labels, i)  # [B, T]
            else:
                tail_log_prob = self._capacity_tail_log_prob(hidden, labels, in_cluster, i, capacity)  # [B, T]
            label_log_prob = tf.where(in_cluster, cluster_log_prob + tail_log_prob, label_log_prob)
        # Every branch is finite, so where() passes neither NaN nor gradient from the unused ones.
        return tf.where(tf.equal(labels, self.pad_id), 0.0, -label_log_prob)

    def log_probs(self, hidden):
        """hidden [..., D] -> [..., vocab_size] float32 log-probabilities over the whole vocabulary."""
        head = self._head_log_probs(hidden)
        parts = [head[..., : self.shortlist_size]]
        for i in range(len(self.clusters)):
            tail_log_probs = tf.nn.log_softmax(self._tail_logits(hidden, *self._tail_weights(i)))
            parts.append(head[..., self.shortlist_size + i, None] + tail_log_probs)
        return tf.concat(parts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "cutoffs": self.cutoffs,
                "proj_factor": self.proj_factor, "proj_dims": self.proj_dims, "pad_id": self.pad_id}
