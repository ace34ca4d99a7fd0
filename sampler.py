"""Sampling from a trained model in the TensorFlow graph: several prompts or samples at once, with
temperature, top-k and top-p, carrying Transformer-XL's memory from token to token.

    ids = sample_ids(model, prompts, max_new_tokens=100, temperature=0.8, top_k=40, seed=1)

One function serves generate.py and the export (export.TextModel), inside a tf.function: a
tf.while_loop over positions whose state is the memory, a [B, max(P) + max_new_tokens] buffer of
ids and where each row ends. Every shape is fixed, so it traces once and runs with no Python per
token. The prompts' common length is read in one segment; then each step feeds one id per row,
its prompt's next id while the prompt lasts and its own last new id after, so that prompts of any
lengths share a batch (the memory's valid length is one for all rows). Past the first segment,
context reaches back mem_len positions per block, as Transformer-XL evaluates.
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


def next_ids(log_probs, temperature, top_k, top_p, seed):
    """[B, V] log-probabilities -> [B] int32 ids: the most likely at temperature 0, else a draw from
    the filtered distribution at that temperature by a stateless op, which the seed ([2] ints) repeats."""
    def draw():
        logits = log_probs / temperature
        logits = tf.cond((top_k > 0) | (top_p < 1.0), lambda: filter_logits(logits, top_k, top_p), lambda: logits)
        return tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]

    return tf.cond(temperature > 0, draw, lambda: tf.argmax(log_probs, axis=-1, output_type=tf.int32))


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
    ids, ends = write_next(first - 1, model.output_layer.log_probs(hidden[:, -1]), ids, prompt_lengths + max_new_tokens)
    _, _, ids, ends = tf.while_loop(generating, step, (first, memory, ids, ends))
    return tf.RaggedTensor.from_tensor(ids, lengths=ends)
