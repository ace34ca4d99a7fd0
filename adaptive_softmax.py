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
import keras
import numpy as np
import tensorflow as tf


def tail_projection_dims(d_model, num_tails, proj_factor=4, proj_dims=None):
    """Each tail's projection width: explicit `proj_dims`, or d_model // proj_factor**i for tail i = 1, 2, ..."""
    if proj_dims is not None:
        if len(proj_dims) != num_tails or any(d < 1 for d in proj_dims):
            raise ValueError(f"proj_dims={list(proj_dims)} must give one positive width per tail cluster ({num_tails}).")
        return list(proj_dims)
    return [max(1, d_model // proj_factor**i) for i in range(1, num_tails + 1)]


def check_cutoffs(cutoffs, vocab_size):
    """Cutoffs come without the vocab size: strictly increasing ids in (0, vocab_size)."""
    given, cutoffs = tuple(cutoffs), list(cutoffs)
    for previous, cutoff in zip([0] + cutoffs, cutoffs):
        if not previous < cutoff < vocab_size:
            raise ValueError(f"cutoffs={given}: {cutoff} is not strictly between {previous} and "
                             f"vocab_size={vocab_size}; give strictly increasing ids, without the vocab size.")
    return cutoffs


def tail_shares(unigram, cutoffs):
    """The probability of each tail cluster under `unigram` (probabilities in id order): the share
    of tokens whose label lies in it, for AdaptiveSoftmax.multiply_adds."""
    bounds = list(cutoffs) + [len(unigram)]
    return [float(np.sum(unigram[start:stop])) for start, stop in zip(bounds[:-1], bounds[1:])]


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

    def _tail_logits(self, hidden, i):
        """[..., D] -> [..., size of tail cluster i] float32 logits of tail cluster i."""
        projected = self._affine(hidden, self.tail_projections[i])
        return tf.cast(self._affine(projected, self.tail_kernels[i], self.tail_biases[i]), tf.float32)

    def _tail_label_log_prob(self, hidden, labels, i):
        """hidden [..., D], labels [...] -> log p(label | tail cluster i) [...] float32.

        The label's logit minus the tail's logsumexp: its log-softmax entry, without materialising
        the log-softmax. Labels outside the cluster are clipped into it, so the value stays finite.
        """
        start, stop = self.clusters[i]
        tail_logits = self._tail_logits(hidden, i)  # [..., stop - start]
        local = tf.clip_by_value(labels - start, 0, stop - start - 1)  # [...]
        label_logit = tf.gather(tail_logits, local, batch_dims=len(local.shape))
        return label_logit - tf.reduce_logsumexp(tail_logits, axis=-1)

    def call(self, hidden, labels, gather_rows=False):
        """hidden [B, T, D], labels [B, T] int -> nll [B, T] float32, 0 where labels == pad_id.

        gather_rows: run each tail only on the rows whose label lies in it; faster, but only
        without XLA (see the class docstring).
        """
        labels = tf.cast(labels, tf.int32)
        head = self._head_log_probs(hidden)  # [B, T, S + C]
        label_log_prob = tf.gather(head, tf.minimum(labels, self.shortlist_size - 1), batch_dims=2)  # [B, T]
        for i, (start, stop) in enumerate(self.clusters):
            cluster_log_prob = head[..., self.shortlist_size + i]  # [B, T]
            in_cluster = (labels >= start) & (labels < stop)  # [B, T]
            if gather_rows:
                rows = tf.where(in_cluster)  # [N_i, 2]: the (b, t) of each label in cluster i.
                log_prob = tf.gather_nd(cluster_log_prob, rows) + self._tail_label_log_prob(
                    tf.gather_nd(hidden, rows), tf.gather_nd(labels, rows), i)  # [N_i]
                label_log_prob = tf.tensor_scatter_nd_update(label_log_prob, rows, log_prob)
            else:
                log_prob = cluster_log_prob + self._tail_label_log_prob(hidden, labels, i)  # [B, T]
                label_log_prob = tf.where(in_cluster, log_prob, label_log_prob)
        # Every branch is finite, so where() passes neither NaN nor gradient from the unused ones.
        return tf.where(tf.equal(labels, self.pad_id), 0.0, -label_log_prob)

    def log_probs(self, hidden):
        """hidden [..., D] -> [..., vocab_size] float32 log-probabilities over the whole vocabulary."""
        head = self._head_log_probs(hidden)
        parts = [head[..., : self.shortlist_size]]
        for i in range(len(self.clusters)):
            parts.append(head[..., self.shortlist_size + i, None] + tf.nn.log_softmax(self._tail_logits(hidden, i)))
        return tf.concat(parts, axis=-1)

    @staticmethod
    def multiply_adds(d_model, vocab_size, cutoffs=(), proj_factor=4, proj_dims=None, tail_shares=None):
        """Multiply-adds per token: the head, plus each tail cluster weighted by tail_shares.

        tail_shares: the fraction of tokens whose label lies in each tail cluster, which is all the
        training loss needs of a tail; None counts every tail for every token (what log_probs and
        a step compiled with XLA compute).
        """
        bounds = list(cutoffs) + [vocab_size]
        dims = tail_projection_dims(d_model, len(cutoffs), proj_factor, proj_dims)
        shares = [1.0] * len(cutoffs) if tail_shares is None else list(tail_shares)
        if len(shares) != len(cutoffs):
            raise ValueError(f"tail_shares={shares} must give one share per tail cluster ({len(cutoffs)}).")
        head = d_model * (bounds[0] + len(cutoffs))
        tails = sum(share * (d_model * dim + dim * (stop - start))
                    for share, dim, start, stop in zip(shares, dims, bounds[:-1], bounds[1:]))
        return head + tails

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "cutoffs": self.cutoffs,
                "proj_factor": self.proj_factor, "proj_dims": self.proj_dims, "pad_id": self.pad_id}
