"""PAR Transformer-XL: a Transformer-XL whose blocks choose between attention, dense and identity.

Pay Attention when Required (Mandava et al. 2020, arXiv 2009.04534) searches which blocks of a
Transformer-XL (Dai et al. 2019, arXiv 1901.02860) need attention: each block of the SuperNet
mixes an attention, a dense (feed-forward) and an identity candidate with a Gumbel-softmax sample
of its learned architecture logits. A fixed architecture ("AADDDI") builds only the named blocks.

The file reads in the order of the papers: relative attention, the three candidate blocks, the
stochastic block that mixes them, the model that stacks them, then its parameter count. Its
hyperparameters are config.ModelConfig; its FLOPs are counted in costs.py.

Layout: activations are batch-major [B, T, D]: batch, the T positions of the current segment,
d_model. Attention looks at K = M + T key positions, the M = mem_len positions of memory before
the segment's own T, with H heads of width d_head (N in einsum strings); inside attention, heads
come first ([H, B, T, N]). Memory is explicit state: `call(tokens, memory) -> (hidden, new_memory)`.
"""
import dataclasses
import functools
import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from adaptive_softmax import AdaptiveSoftmax
from config import CANDIDATES, CHOICES, PAD_ID, ModelConfig, derived_architecture
from gumbel import gumbel_softmax

def initializer():
    """Normal(0, 0.02) as Transformer-XL. A new one per weight: an unseeded Keras initializer repeats its values."""
    return keras.initializers.RandomNormal(stddev=0.02)


class Dropout(keras.layers.Dropout):
    """Keras dropout with its mask drawn from 16 random bits per element by the Philox generator.

    Inside XLA on CPU, TensorFlow's default stateless generator is about 100x slower than Philox
    (1.3 s against 12 ms for 8M numbers), and half the bits of a float mask cost half the time
    again; the rate is honoured to 1/65536. The seed comes from the layer's SeedGenerator, so the
    mask is checkpointed state. Kept values are multiplied by 1 / (1 - rate), not divided by
    1 - rate: a division costs more per element on a CPU.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        return tf.where(self.keep_mask(inputs), inputs * self.keep_scale(inputs.dtype), tf.zeros([], inputs.dtype))

    def keep_mask(self, inputs):
        """A fresh boolean mask of inputs' shape, True with probability 1 - rate."""
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        size = tf.size(inputs)
        bits = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32,
                                           alg="philox")
        halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]  # Two 16-bit draws per 32-bit one.
        return tf.reshape(halves, tf.shape(inputs)) >= tf.constant(round(self.rate * 65536), tf.uint16)

    def keep_scale(self, dtype):
        """1 / (1 - rate): kept values are scaled up so that the expected output equals the input."""
        return tf.constant(1.0 / (1.0 - self.rate), dtype)


class UnscaledReLUDropout(Dropout):
    """ReLU, then dropout without its 1 / (1 - rate) scale, in one select: where(keep and x > 0, x, 0).

    For the dense block's inner activations ([B, T, d_ffn]), its largest tensors. Folding the ReLU
    into the mask saves the ReLU's pass over them forward and its gradient's backward, for the same
    function and gradient (0 where x <= 0, as TensorFlow's ReLU). The caller applies keep_scale to
    a narrower tensor downstream, which saves a multiply over them each way. Not training, a ReLU.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return tf.nn.relu(inputs)
        return tf.where(self.keep_mask(inputs) & (inputs > 0), inputs, tf.zeros([], inputs.dtype))


@tf.custom_gradient
def _standardize(x, epsilon):
    """(x - mean) / sqrt(var + epsilon) over the last axis, with its gradient in closed form:
    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + epsilon), for g the gradient at x_hat."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    inverse_std = tf.math.rsqrt(variance + epsilon)
    standardized = (x - mean) * inverse_std

    def gradient(upstream):
        correction = tf.reduce_mean(upstream, -1, keepdims=True)
        correction += standardized * tf.reduce_mean(upstream * standardized, -1, keepdims=True)
        return (upstream - correction) * inverse_std, None

    return standardized, gradient


@keras.saving.register_keras_serializable(package="par")
class LayerNorm(keras.layers.LayerNormalization):
    """Keras' LayerNormalization over the last axis, in float32 whatever the compute dtype, with the
    gradient of the standardisation written out (_standardize). Forward and backward, a layer
    norm is then 26 small ops instead of Keras' 46, about 2% of a float32 SuperNet step on 2 CPU
    cores. Same weights, so checkpoints do not change.
    """

    def call(self, inputs):
        standardized = _standardize(tf.cast(inputs, tf.float32), tf.constant(self.epsilon, tf.float32))
        return tf.cast(standardized * self.gamma + self.beta, self.compute_dtype)


def shape_list(x):
    """Static dimensions where known, dynamic (tensor) ones elsewhere."""
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape)]


# Relative attention.


def sinusoidal_encoding(distances, d_model):
    """[K] float32 distances -> [K, d_model] float32 encodings: [sin | cos] halves, as Transformer-XL."""
    inv_freq = 1.0 / (10000.0 ** (tf.range(0, d_model, 2, dtype=tf.float32) / d_model))  # [D/2]
    angles = distances[:, None] * inv_freq[None, :]  # [K, D/2]
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


def relative_shift(scores):
    """Re-indexes position scores from distance order to key order, for T queries after M memory keys.

    [H, B, T, K] in, column c scoring distance K-1-c; [H, B, T, K] out, column j scoring key j,
    i.e. distance M + t - j for query t. The Transformer-XL trick: pad a zero column on the left,
    view each [T, K+1] block as [K+1, T], drop its first row and view the rest as [T, K], which
    shifts row t left by T-1-t. Columns j > M + t (future keys) get wrapped values: the causal
    mask removes them. It holds for any T <= K, so with or without memory. tf.slice, not
    indexing: the gradient of a strided slice costs 3x the whole shift on CPU.
    """
    heads, batch, queries, keys = shape_list(scores)
    padded = tf.pad(scores, [[0, 0], [0, 0], [0, 0], [1, 0]])  # [H, B, T, K+1]
    padded = tf.reshape(padded, [heads, batch, keys + 1, queries])  # [H, B, K+1, T]
    return tf.reshape(tf.slice(padded, [0, 0, 1, 0], [-1, -1, -1, -1]), [heads, batch, queries, keys])  # [H, B, T, K]


class KeyValues(NamedTuple):
    """Attention's keys and values over a context, [H, B, K, N] each."""

    keys: tf.Tensor
    values: tf.Tensor


@keras.saving.register_keras_serializable(package="par")
class RelativeMultiHeadAttention(keras.layers.Layer):
    """Transformer-XL attention: queries from the segment, keys and values over [memory; segment].

    The score of query t (key index M + t) for key j, scaled by 1/sqrt(d_head), is
        (q_t + u) . k_j  +  (q_t + v) . W_r R(M + t - j)
    with R(d) the sinusoidal encoding of the distance d (clamped to clamp_len when given). R
    depends on the distance only, so memory carries no absolute positions and the memory may be
    longer at evaluation. u (content bias) and v (position bias) are learned per head. Query t
    sees the valid memory and the keys up to itself; the softmax runs in float32 so that masking
    stays finite in float16 and bfloat16.
    """

    def __init__(self, num_heads, d_head, attention_dropout_rate=0.0, clamp_len=-1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.d_head = d_head
        self.attention_dropout_rate = attention_dropout_rate
        self.clamp_len = clamp_len
        self.dropout = Dropout(attention_dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        d_model = input_shape[-1]
        projection = (d_model, self.num_heads, self.d_head)
        self.query_kernel = self.add_weight(projection, initializer(), name="query_kernel")
        self.key_kernel = self.add_weight(projection, initializer(), name="key_kernel")
        self.value_kernel = self.add_weight(projection, initializer(), name="value_kernel")
        self.position_kernel = self.add_weight(projection, initializer(), name="position_kernel")  # W_r
        self.output_kernel = self.add_weight((self.num_heads, self.d_head, d_model), initializer(),
                                             name="output_kernel")
        self.content_bias = self.add_weight((self.num_heads, self.d_head), initializer(), name="content_bias")  # u
        self.position_bias = self.add_weight((self.num_heads, self.d_head), initializer(), name="position_bias")  # v

    def keys_values(self, context):
        """[B, K, D] -> KeyValues, [H, B, K, N] each. Heads first: the score and value products are then
        batched matmuls whose gradients need no transposes (alone, forward and backward, about 1.2x faster
        than batch-major einsums on CPU), and the position scores are one [B*T, K] product per head. The
        kernels are cast here: generation calls this outside the layer's call, where Keras does not autocast."""
        return KeyValues(*(tf.einsum("bkd,dhn->hbkn", context, tf.cast(kernel, self.compute_dtype))
                           for kernel in (self.key_kernel, self.value_kernel)))

    def call(self, x, memory, valid_length, training=None):
        """x [B, T, D]; memory [B, M, D], the M inputs before x, of which the last valid_length
        (int32 scalar) are real and the first M - valid_length not yet filled -> [B, T, D].
        memory may instead be the KeyValues of [memory; x], projected already (generation)."""
        batch, num_queries = shape_list(x)[:2]
        if isinstance(memory, KeyValues):
            key, value = memory
        else:
            memory = tf.stop_gradient(memory)  # The previous segment is context, not trained through.
            key, value = self.keys_values(tf.concat([memory, x], axis=1))  # [H, B, K, N] each
        num_keys = shape_list(key)[2]
        num_memory = num_keys - num_queries
        query = tf.einsum("btd,dhn->hbtn", x, self.query_kernel)  # [H, B, T, N]

        distances = tf.range(num_keys - 1, -1, -1, dtype=tf.float32)  # [K]: K-1 down to 0
        if self.clamp_len > 0:
            distances = tf.minimum(distances, float(self.clamp_len))
        encodings = tf.cast(sinusoidal_encoding(distances, x.shape[-1]), self.compute_dtype)  # [K, D]
        position_keys = tf.einsum("kd,dhn->hkn", encodings, self.position_kernel)  # [H, K, N]

        content_scores = tf.matmul(query + self.content_bias[:, None, None], key, transpose_b=True)  # [H, B, T, K]
        position_queries = tf.reshape(query + self.position_bias[:, None, None], [self.num_heads, -1, self.d_head])
        position_scores = tf.matmul(position_queries, position_keys, transpose_b=True)  # [H, B*T, K] by distance
        position_scores = tf.reshape(position_scores, [self.num_heads, batch, num_queries, num_keys])
        position_scores = relative_shift(position_scores)  # [H, B, T, K] by key
        scores = (tf.cast(content_scores, tf.float32) + tf.cast(position_scores, tf.float32)) / math.sqrt(self.d_head)

        key_index = tf.range(num_keys)[None, :]  # [1, K]
        query_index = num_memory + tf.range(num_queries)[:, None]  # [T, 1], absolute in the key axis
        visible = (key_index <= query_index) & (key_index >= num_memory - valid_length)  # [T, K]
        # A finite float32 fill: exp underflows to exactly 0, and no row is fully masked (a query sees itself).
        scores = tf.where(visible, scores, tf.constant(-1e9, tf.float32))
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), self.compute_dtype)  # [H, B, T, K]
        weights = self.dropout(weights, training=training)

        attended = tf.matmul(weights, value)  # [H, B, T, N]
        return tf.einsum("hbtn,hnd->btd", attended, self.output_kernel)  # [B, T, D]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "d_head": self.d_head,
                "attention_dropout_rate": self.attention_dropout_rate, "clamp_len": self.clamp_len}


# The three candidates. They share one call signature so that a stochastic block can mix them and a
# fixed architecture can stack them; the dense and identity blocks ignore memory.


@keras.saving.register_keras_serializable(package="par")
class AttentionBlock(keras.layers.Layer):
    """Post-norm LN(x + Dropout(Attn(x, memory))); pre-norm x + Dropout(Attn(LN(x), LN(memory)))."""

    uses_memory = True

    def __init__(self, num_heads, d_head, dropout_rate=0.0, attention_dropout_rate=0.0, clamp_len=-1,
                 pre_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.d_head = d_head
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.clamp_len = clamp_len
        self.pre_norm = pre_norm
        self.attention = RelativeMultiHeadAttention(num_heads, d_head, attention_dropout_rate, clamp_len,
                                                    dtype=self.dtype_policy)
        self.dropout = Dropout(dropout_rate, dtype=self.dtype_policy)
        self.norm = LayerNorm(epsilon=1e-5, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.norm.build(input_shape)

    def keys_values(self, x):
        """Block inputs [B, K, D] -> KeyValues, [H, B, K, N] each, as this block's attention projects them."""
        return self.attention.keys_values(self.norm(x) if self.pre_norm else x)

    def call(self, x, memory=None, valid_length=None, training=None):
        """x [B, T, D], memory [B, M, D] (this block's earlier inputs) or KeyValues (see
        RelativeMultiHeadAttention), valid_length int32 -> [B, T, D]."""
        if self.pre_norm:
            # The memory holds block inputs, so it is normalised like x: LN is per position.
            memory = memory if isinstance(memory, KeyValues) else self.norm(memory)
            attended = self.attention(self.norm(x), memory, valid_length, training=training)
            return x + self.dropout(attended, training=training)
        attended = self.attention(x, memory, valid_length, training=training)
        return self.norm(x + self.dropout(attended, training=training))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "d_head": self.d_head,
                "dropout_rate": self.dropout_rate, "attention_dropout_rate": self.attention_dropout_rate,
                "clamp_len": self.clamp_len, "pre_norm": self.pre_norm}


@keras.saving.register_keras_serializable(package="par")
class DenseBlock(keras.layers.Layer):
    """Position-wise feed-forward. Post-norm LN(x + Dropout(FFN(x))); pre-norm x + Dropout(FFN(LN(x)))
    with FFN(x) = W2 Dropout(ReLU(W1 x + b1)) + b2."""

    uses_memory = False

    def __init__(self, d_model, d_ffn, dropout_rate=0.0, pre_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.d_model = d_model
        self.d_ffn = d_ffn
        self.dropout_rate = dropout_rate
        self.pre_norm = pre_norm
        self.inner = keras.layers.Dense(d_ffn, kernel_initializer=initializer(), dtype=self.dtype_policy)
        self.inner_dropout = UnscaledReLUDropout(dropout_rate, dtype=self.dtype_policy)  # The ReLU, then dropout.
        # Holds W2 and b2; call applies them itself (_outer_of_scaled).
        self.outer = keras.layers.Dense(d_model, kernel_initializer=initializer(), dtype=self.dtype_policy)
        self.dropout = Dropout(dropout_rate, dtype=self.dtype_policy)
        self.norm = LayerNorm(epsilon=1e-5, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.d_ffn))
        self.norm.build(input_shape)

    def call(self, x, memory=None, valid_length=None, training=None):
        """x [B, T, D] -> [B, T, D]; memory and valid_length are ignored."""
        inputs = self.norm(x) if self.pre_norm else x
        hidden = self.inner_dropout(self.inner(inputs), training=training)  # [B, T, F], kept values unscaled
        outputs = x + self.dropout(self._outer_of_scaled(hidden, training), training=training)
        return outputs if self.pre_norm else self.norm(outputs)

    def _outer_of_scaled(self, hidden, training):
        """outer(hidden / (1 - rate)) when training, else outer(hidden): the inner dropout's scale
        lands on the [B, T, D] product, not on the d_ffn / d_model times larger hidden."""
        kernel, bias = (tf.cast(weight, self.compute_dtype) for weight in (self.outer.kernel, self.outer.bias))
        product = tf.tensordot(hidden, kernel, 1)
        if training and self.dropout_rate:
            product *= self.inner_dropout.keep_scale(product.dtype)
        return product + bias

    def get_config(self):
        return {**super().get_config(), "d_model": self.d_model, "d_ffn": self.d_ffn,
                "dropout_rate": self.dropout_rate, "pre_norm": self.pre_norm}


@keras.saving.register_keras_serializable(package="par")
class IdentityBlock(keras.layers.Layer):
    """x [B, T, D] -> x: the candidate that lets a block be skipped."""

    uses_memory = False

    def call(self, x, memory=None, valid_length=None, training=None):
        return x


@keras.saving.register_keras_serializable(package="par")
class StochasticBlock(keras.layers.Layer):
    """A SuperNet block: the sum of its candidates' outputs weighted by a relaxed choice.

    Training: weights = Gumbel-softmax(arch_logits, tau), one sample per call ([3]) or per example
    ([B, 3]); with straight_through a hard one-hot forward and soft gradients backward; with
    single_path only the sampled candidate runs (sampled_candidate). Not training: deterministic, pi = softmax(arch_logits) ("mix"), or the argmax candidate alone
    ("argmax", which runs only that candidate). arch_logits are logits, never probabilities, and
    start at zero (uniform pi). The layer owns a SeedGenerator so the Gumbel noise state is a
    variable: checkpointed, and valid inside XLA.

    The layer does not autocast: tau and arch_logits stay float32, and each candidate casts its
    own inputs to the compute dtype.
    """

    def __init__(self, candidates, gumbel_per_example=False, straight_through=False, single_path=False, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.candidates = list(candidates)
        self.gumbel_per_example = gumbel_per_example
        self.straight_through = straight_through
        self.single_path = single_path
        self.arch_logits = self.add_weight((len(self.candidates),), "zeros", dtype="float32", name="arch_logits")
        self.seed_generator = keras.random.SeedGenerator(name="gumbel_seed")

    @property
    def uses_memory(self):
        return any(candidate.uses_memory for candidate in self.candidates)

    def keys_values(self, x):
        """The attention candidate's KeyValues of block inputs x (AttentionBlock.keys_values)."""
        return next(candidate for candidate in self.candidates if candidate.uses_memory).keys_values(x)

    def build(self, input_shape):
        for candidate in self.candidates:
            candidate.build(input_shape)

    def choice_weights(self, batch_size, tau=1.0, training=None):
        """float32 weights of the candidates: [B, 3] when sampling per example, else [3]; pi when not training."""
        logits = tf.convert_to_tensor(self.arch_logits)
        if not training:
            return tf.nn.softmax(logits)
        if self.gumbel_per_example:
            logits = tf.broadcast_to(logits, [batch_size, len(self.candidates)])
        return gumbel_softmax(logits, tf.cast(tau, tf.float32), hard=self.straight_through, seed=self.seed_generator)

    def call(self, x, memory=None, valid_length=None, tau=1.0, training=None, eval_mode="mix"):
        """x [B, T, D], memory [B, M, D], valid_length int32, tau float32 scalar -> [B, T, D]."""
        if not training and eval_mode == "argmax":  # Only the chosen candidate runs.
            branches = [functools.partial(candidate, x, memory, valid_length, training=False)
                        for candidate in self.candidates]
            return tf.switch_case(tf.argmax(self.arch_logits, output_type=tf.int32), branches)
        if training and self.single_path:
            return self.sampled_candidate(x, memory, valid_length, tau)
        weights = tf.cast(self.choice_weights(shape_list(x)[0], tau, training), self.compute_dtype)
        if self.gumbel_per_example and training:  # Evaluation mixes with pi, one [3] for every example.
            weights = weights[:, None, None, :]  # [B, 1, 1, 3]
        outputs = [candidate(x, memory, valid_length, training=training) for candidate in self.candidates]
        return sum(weights[..., i] * output for i, output in enumerate(outputs))

    def sampled_candidate(self, x, memory, valid_length, tau):
        """GDAS (Dong and Yang 2019): only the candidate k of a hard Gumbel sample runs, its output times
        h_k = 1 - stop_gradient(s_k) + s_k, which is 1 forward while the soft sample s_k carries the
        gradient to every logit."""
        weights = gumbel_softmax(tf.convert_to_tensor(self.arch_logits), tf.cast(tau, tf.float32), hard=True,
                                 seed=self.seed_generator)
        weights = tf.cast(weights, self.compute_dtype)
        def branch(i):
            def run():
                return weights[i] * self.candidates[i](x, memory, valid_length, training=True)
            return run

        return tf.switch_case(tf.argmax(weights, output_type=tf.int32), [branch(i) for i in range(len(self.candidates))])

    def get_config(self):
        return {**super().get_config(), "gumbel_per_example": self.gumbel_per_example,
                "straight_through": self.straight_through, "single_path": self.single_path,
                "candidates": [keras.saving.serialize_keras_object(c) for c in self.candidates]}

    @classmethod
    def from_config(cls, config):
        candidates = [keras.saving.deserialize_keras_object(c) for c in config.pop("candidates")]
        return cls(candidates, **config)


# The model.


class Memory(NamedTuple):
    """Each attention-bearing block's last mem_len inputs, and how many of them are real.

    states: [num_memory_layers, B, mem_len, D] in the compute dtype, right-aligned (the newest
    position last); valid_length: int32 scalar, min(positions seen, mem_len). Fixed shapes, so a
    compiled step traces once.
    """

    states: tf.Tensor
    valid_length: tf.Tensor


class KeyValueMemory(NamedTuple):
    """The memory as each attention-bearing block's keys and values of its last mem_len inputs,
    [num_memory_layers, H, B, mem_len, N] each, and valid_length as in Memory. Only while the weights
    do not change (generation): each position is then projected once, not again at every later step.
    """

    keys: tf.Tensor
    values: tf.Tensor
    valid_length: tf.Tensor


@keras.saving.register_keras_serializable(package="par")
class TransformerXL(keras.Model):
    """Token embedding (scaled by sqrt(d_model)), dropout, the blocks, a final LayerNorm when
    pre-norm, dropout, and an adaptive softmax.

    The SuperNet (config.architecture None) stacks num_layers StochasticBlocks; a fixed
    architecture stacks exactly the named blocks, so "DDDDDD" builds no attention weights and
    keeps no memory. Pass the dtype policy here (dtype="mixed_bfloat16"); every sublayer inherits
    it. The model does not autocast: tau stays float32, and the memory is cast explicitly.
    """

    def __init__(self, config, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.config = config
        self.is_supernet = config.architecture is None
        self.embedding = keras.layers.Embedding(config.vocab_size, config.d_model,
                                                embeddings_initializer=initializer(), dtype=self.dtype_policy)
        self.embedding_dropout = Dropout(config.dropout_rate, dtype=self.dtype_policy)
        self.blocks = [self._make_block(kinds) for kinds in config.block_kinds]
        self.final_norm = (LayerNorm(epsilon=1e-5, dtype=self.dtype_policy)
                           if config.pre_norm else None)
        self.output_dropout = Dropout(config.dropout_rate, dtype=self.dtype_policy)
        self.output_layer = AdaptiveSoftmax(config.vocab_size, config.cutoffs, config.proj_factor,
                                            config.proj_dims, PAD_ID,
                                            tied_embedding=self.embedding if config.tie_embeddings else None,
                                            dtype=self.dtype_policy)

    def _make_block(self, kinds):
        """One block: a StochasticBlock over kinds "ADI", or the single candidate named by one letter."""
        config, dtype = self.config, self.dtype_policy

        def candidate(kind):
            if kind == "A":
                return AttentionBlock(config.num_heads, config.head_dim, config.dropout_rate,
                                      config.attention_dropout_rate, config.clamp_len, config.pre_norm, dtype=dtype)
            if kind == "D":
                return DenseBlock(config.d_model, config.d_ffn, config.dropout_rate, config.pre_norm, dtype=dtype)
            return IdentityBlock(dtype=dtype)

        if len(kinds) == 1:
            return candidate(kinds)
        return StochasticBlock([candidate(kind) for kind in kinds], config.gumbel_per_example,
                               config.straight_through, config.single_path, dtype=dtype)

    def build(self, tokens_shape):
        """Creates every weight from the tokens' shape [B, T], without running the model."""
        hidden_shape = (*tokens_shape, self.config.d_model)
        self.embedding.build(tokens_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        if self.final_norm is not None:
            self.final_norm.build(hidden_shape)
        self.output_layer.build(hidden_shape)

    @property
    def memory_blocks(self):
        """The blocks that keep a memory: those with attention."""
        return [block for block in self.blocks if block.uses_memory]

    @property
    def num_memory_layers(self):
        return len(self.memory_blocks)

    def initial_memory(self, batch_size):
        """An empty Memory for batch_size rows: zero states, valid_length 0."""
        shape = (self.num_memory_layers, batch_size, self.config.mem_len, self.config.d_model)
        return Memory(tf.zeros(shape, self.compute_dtype), tf.constant(0, tf.int32))

    def key_value_memory(self, memory):
        """Memory -> KeyValueMemory: each attention-bearing block's keys and values of its memory states."""
        states = tf.cast(memory.states, self.compute_dtype)
        projected = [block.keys_values(states[i]) for i, block in enumerate(self.memory_blocks)]
        if not projected:  # No attention: empty keys and values, as Memory keeps empty states.
            empty = tf.zeros([0, self.config.num_heads, *shape_list(states)[1:3], self.config.head_dim],
                             self.compute_dtype)
            return KeyValueMemory(empty, empty, memory.valid_length)
        return KeyValueMemory(*(tf.stack(part) for part in zip(*projected)), memory.valid_length)

    def call(self, tokens, memory, tau=1.0, training=False, eval_mode="mix"):
        """tokens [B, T] int32, memory: Memory (or KeyValueMemory), tau float scalar -> (hidden [B, T, D],
        new memory of the same kind).

        hidden is the output layer's input (after the final dropout). Each attention-bearing
        block's new memory is the last mem_len positions of its input, concat[old memory, x],
        without gradient (or their keys and values). eval_mode, for a SuperNet not training: "mix"
        the candidates with pi, or run each block's "argmax" candidate alone.
        """
        if eval_mode not in CHOICES["eval_mode"]:
            raise ValueError(f"eval_mode={eval_mode!r} must be one of {CHOICES['eval_mode']}.")
        num_tokens = shape_list(tokens)[1]
        projected = isinstance(memory, KeyValueMemory)
        # [L_mem, B, M, D] states, or [L_mem, H, B, M, N] keys and values.
        tensors = memory[:2] if projected else (tf.cast(memory.states, self.compute_dtype),)
        mem_len = tensors[0].shape[-2]  # The memory given, which may differ from config.mem_len.
        x = self.embedding(tokens) * tf.cast(math.sqrt(self.config.d_model), self.compute_dtype)  # [B, T, D]
        x = self.embedding_dropout(x, training=training)
        extra = dict(tau=tau, eval_mode=eval_mode) if self.is_supernet else {}
        per_block = []  # Each attention-bearing block's new memory tensors.
        for block in self.blocks:
            if block.uses_memory:
                block_memory, new = self._block_memory(block, x, [tensor[len(per_block)] for tensor in tensors])
                per_block.append(new)
                x = block(x, block_memory, memory.valid_length, training=training, **extra)
            else:
                x = block(x, training=training, **extra)
        if self.final_norm is not None:
            x = self.final_norm(x)
        hidden = self.output_dropout(x, training=training)
        valid_length = tf.minimum(memory.valid_length + num_tokens, mem_len)
        new_tensors = [tf.stack(parts) for parts in zip(*per_block)] if per_block else tensors
        return hidden, (KeyValueMemory if projected else Memory)(*new_tensors, valid_length)

    @staticmethod
    def _block_memory(block, x, own):
        """One block's memory argument and its new memory, from its own part of the memory: [states [B, M, D]]
        gives the states and the last M of [states; x]; [keys, values] ([H, B, M, N]) gives the KeyValues of
        [memory; x], and their last M positions."""
        num_tokens = shape_list(x)[1]
        if len(own) == 1:
            return own[0], (tf.stop_gradient(tf.concat([own[0], x], axis=1)[:, num_tokens:]),)
        context = KeyValues(*(tf.concat([old, new], axis=2) for old, new in zip(own, block.keys_values(x))))
        return context, tuple(part[:, :, num_tokens:] for part in context)

    def token_nll(self, tokens, labels, memory, tau=1.0, training=False, eval_mode="mix", gather_rows=False,
                  tail_capacities=None):
        """tokens, labels [B, T] int32 -> (nll [B, T] float32, 0 at pad labels; new Memory).

        gather_rows: each adaptive softmax tail scores only its own tokens; only for steps not
        compiled with XLA. tail_capacities: each tail scores that many rows; for steps compiled
        with XLA (see AdaptiveSoftmax).
        """
        hidden, new_memory = self(tokens, memory, tau=tau, training=training, eval_mode=eval_mode)
        return self.output_layer(hidden, labels, gather_rows=gather_rows, tail_capacities=tail_capacities), new_memory

    def log_probs(self, tokens, memory, tau=1.0, training=False, eval_mode="mix"):
        """tokens [B, T] int32 -> (log-probabilities [B, T, V] float32, new Memory)."""
        hidden, new_memory = self(tokens, memory, tau=tau, training=training, eval_mode=eval_mode)
        return self.output_layer.log_probs(hidden), new_memory

    @property
    def arch_variables(self):
        """The architecture logits, one [3] variable per block; empty for a fixed architecture."""
        return [block.arch_logits for block in self.blocks if self.is_supernet]

    def per_step_sample_seeds(self):
        """The seed states of the blocks that draw one Gumbel sample a step (not one per example): a step run in
        chunks (train.py --batch_chunk) sets them back before each chunk, so that every chunk draws that sample."""
        return [block.seed_generator.state for block in self.blocks if self.is_supernet and not block.gumbel_per_example]

    @property
    def weight_variables(self):
        """Every trainable variable but the architecture logits, the embedding first."""
        arch = {id(variable) for variable in self.arch_variables}
        return [variable for variable in self.trainable_variables if id(variable) not in arch]

    def arch_probabilities(self):
        """pi per block, numpy [num_layers, 3] (attention, dense, identity); one-hot for a fixed architecture."""
        if not self.is_supernet:
            return np.eye(len(CANDIDATES), dtype=np.float32)[[CANDIDATES.index(k) for k in self.config.architecture]]
        logits = np.stack([variable.numpy() for variable in self.arch_variables])  # [L, 3]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def derived_architecture(self):
        """Each block's most probable candidate, e.g. "AADDDI"."""
        return derived_architecture(self.arch_probabilities())

    def summary_lines(self, batch_size, seq_len):
        """One line per layer, in order: its name, what it holds, its output's shape and its parameters.

        Keras' own summary prints "?" for every shape of a model called with a memory.
        """
        shape, d_model = f"[{batch_size}, {seq_len}]", self.config.d_model
        hidden = f"[{batch_size}, {seq_len}, {d_model}]"
        kinds = {AttentionBlock: "attention", DenseBlock: "dense", IdentityBlock: "identity"}
        rows = [("embedding", f"{self.config.vocab_size} x {d_model}", hidden, self.embedding)]
        for i, block in enumerate(self.blocks):
            candidates = getattr(block, "candidates", [block])
            rows.append((f"block {i}", " | ".join(kinds[type(c)] for c in candidates), hidden, block))
        if self.final_norm is not None:
            rows.append(("final layer norm", "", hidden, self.final_norm))
        rows.append(("adaptive softmax", f"cutoffs {list(self.config.cutoffs)}", f"{shape} NLL", self.output_layer))
        lines = [f"{name:<17} {holds:<28} {output:<16} {layer.count_params():>10,}" for name, holds, output, layer in rows]
        total = sum(int(np.prod(variable.shape)) for variable in self.trainable_variables)
        return [f"{'layer':<17} {'holds':<28} {'output':<16} {'parameters':>10}", *lines, f"{'total':<62} {total:>10,}"]

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        return cls(ModelConfig(**config.pop("config")), **config)


# Accounting.


def count_parameters(model):
    """Trainable parameter counts per part of a built TransformerXL; "total" is all trainable weights."""

    def size(variables):
        return int(sum(np.prod(variable.shape) for variable in variables))

    counts = dict(embedding=size(model.embedding.trainable_weights), attention=0, dense=0, layer_norm=0,
                  arch_logits=size(model.arch_variables), output=size(model.output_layer.trainable_weights))
    for block in model.blocks:
        for candidate in getattr(block, "candidates", [block]):
            if isinstance(candidate, AttentionBlock):
                counts["attention"] += size(candidate.attention.trainable_weights)
            if isinstance(candidate, DenseBlock):
                counts["dense"] += size(candidate.inner.trainable_weights + candidate.outer.trainable_weights)
            if isinstance(candidate, (AttentionBlock, DenseBlock)):
                counts["layer_norm"] += size(candidate.norm.trainable_weights)
    if model.final_norm is not None:
        counts["layer_norm"] += size(model.final_norm.trainable_weights)
    counts["total"] = sum(counts.values())
    return counts
