"""Sampling from a trained model in the TensorFlow graph: several prompts or samples at once, with
temperature, top-k and top-p, carrying Transformer-XL's memory from token to token.

    ids = sample_ids(model, prompts, max_new_tokens=100, temperature=0.8, top_k=40, seed=1)

One function serves generate.py and the export (export.TextModel), inside a tf.function: a
tf.while_loop over positions whose state is the memory, a [B, max(P) + max_new_tokens] buffer of
ids and where each row ends. Every shape is fixed, so it traces once and runs with no Python per
token. The prompts' common length is read in one segment; then each step feeds one id per row,
its prompt's next id while the prompt lasts and its own last new id after, so that prompts of any
lengths share a batch (the memory's valid length is one for all rows). Past the first segment,
context reaches back mem_len positions per block, as Transformer-XL evaluates, and the memory is kept as
its keys and values (model.KeyValueMemory), so that each position is projected once.
"""
import numpy as np
import tensorflow as tf

from data_utils import EOL_ID, PAD_ID


def check(valid, message):
    """Raises InvalidArgumentError(message) unless `valid` (a bool tensor). In a graph, one Assert op that shows
    only the message: tf.debugging's asserts also show their tensors, inside a cond that Grappler's loop
    optimizer warns about."""
    tf.debugging.Assert(valid, [message])


def filter_logits(logits, top_k, top_p):
    """[B, V] -> [B, V], -inf outside each row's top_k logits (0: all of them) and outside its nucleus,
    the fewest most likely tokens whose probability reaches top_p (the one that crosses it kept). A
    token tied with the least likely one kept is kept too."""
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")  # [B, V]
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)  # [B, V]
    rank = tf.range(tf.shape(logits)[-1])  # [V]
    # A prefix of each sorted row, never empty. top_p = 1 keeps all, whatever the rounding of the sum.
    kept = ((mass_before < top_p) | (top_p >= 1.0)) & ((top_k == 0) | (rank < top_k))  # [B, V]
    least_kept = tf.reduce_min(tf.where(kept, sorted_logits, np.inf), axis=-1, keepdims=True)  # [B, 1]
    return tf.where(logits >= least_kept, logits, -np.inf)


def where_it_falls(mass, point):
    """[B, N] non-negative masses laid end to end, [B, 1] points -> ([B] int32 index of the segment each
    point falls in, [B, N] mass before each segment). Segments of mass 0 are never chosen; a point past
    the end (by rounding) falls in the last segment of positive mass."""
    before = tf.cumsum(mass, axis=-1, exclusive=True)
    reached = (before <= point) & (mass > 0)
    return tf.reduce_max(tf.where(reached, tf.range(tf.shape(mass)[-1]), -1), axis=-1), before


def draw(logits, seed, width=128):
    """[B, V] logits -> [B] int32 ids drawn from softmax(logits) by inverse transform sampling in two levels:
    a uniform point per row picks a block of `width` ids by their total probabilities, then an id within
    it. One random number per row and two short cumulative sums, where a Gumbel-max draw
    (tf.random.stateless_categorical) takes a random number per token, and one cumulative sum over the
    vocabulary costs more on a CPU than both. An id of probability 0 (logit -inf) is never drawn. The
    seed ([2] ints) repeats the draw."""
    probs = tf.nn.softmax(logits)
    batch, vocab = tf.shape(probs)[0], tf.shape(probs)[1]
    num_blocks = (vocab + width - 1) // width
    blocks = tf.reshape(tf.pad(probs, [[0, 0], [0, num_blocks * width - vocab]]), [batch, num_blocks, width])
    block_mass = tf.reduce_sum(blocks, axis=-1)  # [B, C]
    point = tf.random.stateless_uniform([batch, 1], seed) * tf.reduce_sum(block_mass, axis=-1, keepdims=True)
    block, mass_before = where_it_falls(block_mass, point)  # [B], [B, C]
    within, _ = where_it_falls(tf.gather(blocks, block, batch_dims=1),
                               point - tf.gather(mass_before, block[:, None], batch_dims=1))
    return block * width + within


def next_ids(log_probs, temperature, top_k, top_p, seed):
    """[B, V] log-probabilities -> [B] int32 ids: the most likely at temperature 0, else a draw from
    the filtered distribution at that temperature, which the seed ([2] ints) repeats."""
    def sample():
        logits = log_probs / temperature
        logits = tf.cond((top_k > 0) | (top_p < 1.0), lambda: filter_logits(logits, top_k, top_p), lambda: logits)
        return draw(logits, seed)

    return tf.cond(temperature > 0, sample, lambda: tf.argmax(log_probs, axis=-1, output_type=tf.int32))


def sample_ids(model, prompts, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop_at_eol=False,
               eval_mode="mix"):
    """Continues each prompt: prompts ragged [B, (P)] int32, at least one id each -> ragged [B, (P + N)],
    each prompt followed by its N = max_new_tokens new ids, or by those before its first end of line
    (left out) when stop_at_eol.

    temperature 0 decodes greedily; top_k 0 keeps every token, top_p 1 the whole distribution. The
    same seed (an int) gives the same ids. eval_mode: how a SuperNet runs ("mix" or "argmax").
    """
    temperature, top_p = tf.cast(temperature, tf.float32), tf.cast(top_p, tf.float32)
    top_k, max_new_tokens = tf.cast(top_k, tf.int32), tf.cast(max_new_tokens, tf.int32)
    stop_at_eol, seed = tf.cast(stop_at_eol, tf.bool), tf.cast(seed, tf.int64)
    prompt_lengths = tf.cast(prompts.row_lengths(), tf.int32)  # [B]
    for valid, message in [(max_new_tokens >= 0, "max_new_tokens must be 0 or more"),
                           (temperature >= 0, "temperature must be 0 (greedy) or more"),
                           (top_k >= 0, "top_k must be 0 (all tokens) or more"),
                           ((top_p > 0) & (top_p <= 1), "top_p must be in (0, 1]"),
                           (tf.reduce_all(prompt_lengths > 0), "every prompt needs at least one id")]:
        check(valid, message)
    # [B, L + 1]: the prompts, then room for the new ids and a spare column, written and never read back.
    ids = tf.pad(prompts.to_tensor(PAD_ID), [[0, 0], [0, max_new_tokens + 1]], constant_values=PAD_ID)
    columns = tf.range(tf.shape(ids)[1])  # [L + 1]

    def write_next(position, log_probs, ids, ends):
        """Writes each row's id at position + 1, its prompt's or one drawn from log_probs [B, V]."""
        new = next_ids(log_probs, temperature, top_k, top_p, tf.stack([seed, tf.cast(position, tf.int64)]))
        sampling = position + 1 >= prompt_lengths  # [B]
        ids = tf.where(columns == position + 1, tf.where(sampling, new, ids[:, position + 1])[:, None], ids)
        ends = tf.where(stop_at_eol & sampling & (new == EOL_ID), tf.minimum(ends, position + 1), ends)
        return ids, ends

    def step(position, memory, ids, ends):
        """Feeds each row's id at `position`, then writes the one after it."""
        log_probs, memory = model.log_probs(ids[:, position, None], memory, eval_mode=eval_mode)  # [B, 1, V]
        return (position + 1, memory, *write_next(position, log_probs[:, 0], ids, ends))

    def generating(position, memory, ids, ends):
        return position + 1 < tf.reduce_max(ends)

    # The prompts' common length in one segment, as Transformer-XL reads a text; the rest one id at a time.
    first = tf.reduce_min(prompt_lengths)
    empty = model.initial_memory(tf.shape(ids)[0])
    hidden, memory = model(ids[:, :first], empty, eval_mode=eval_mode)
    memory = memory._replace(states=tf.ensure_shape(memory.states, empty.states.shape))  # T was unknown.
    memory = model.key_value_memory(memory)  # From here on each position's keys and values are projected once.
    ids, ends = write_next(first - 1, model.output_layer.log_probs(hidden[:, -1]), ids, prompt_lengths + max_new_tokens)
    _, _, ids, ends = tf.while_loop(generating, step, (first, memory, ids, ends))
    return tf.RaggedTensor.from_tensor(ids, lengths=ends)
