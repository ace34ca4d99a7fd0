"""What a model costs, counted without running it: multiply-adds and FLOPs per token.

The adaptive softmax's cost model (Grave et al. 2017), which optimal_cuts.py minimises over the
cutoffs, and the FLOPs of each candidate block and of a whole model, which bench.py turns into MFU
and the search can charge for its choices. Plain arithmetic on a ModelConfig: no TensorFlow, so
optimal_cuts.py starts without it.
"""
import numpy as np


def tail_projection_dims(d_model, num_tails, proj_factor=4, proj_dims=None):
    """Each tail's projection width: explicit `proj_dims`, or d_model // proj_factor**i for tail i = 1, 2, ..."""
    if proj_dims is not None:
        if len(proj_dims) != num_tails or any(d < 1 for d in proj_dims):
            raise ValueError(f"proj_dims={list(proj_dims)} must give one positive width per tail cluster ({num_tails}).")
        return list(proj_dims)
    return [max(1, d_model // proj_factor**i) for i in range(1, num_tails + 1)]


def tail_shares(unigram, cutoffs):
    """The probability of each tail cluster under `unigram` (probabilities in id order): the share
    of tokens whose label lies in it, for softmax_multiply_adds."""
    bounds = list(cutoffs) + [len(unigram)]
    return [float(np.sum(unigram[start:stop])) for start, stop in zip(bounds[:-1], bounds[1:])]


def head_multiply_adds(d_model, head_size, min_cost=0):
    """Multiply-adds per token of the head's [d_model, head_size] matmul: the shortlist and one logit per tail.

    min_cost: columns below which a matmul gets no cheaper (Grave et al.'s GPU saturation constant,
    optimal_cuts.py's --min_cost); 0 counts plain multiply-adds. head_size may be an array of sizes.
    """
    return d_model * np.maximum(min_cost, head_size)


def tail_multiply_adds(d_model, width, size, min_cost=0):
    """Multiply-adds per token that runs a tail cluster of `size` ids: its [d_model, width] projection, then
    its [width, size] logits. min_cost as in head_multiply_adds; size may be an array of sizes."""
    return d_model * width + width * np.maximum(min_cost, size)


def softmax_multiply_adds(d_model, vocab_size, cutoffs=(), proj_factor=4, proj_dims=None, tail_shares=None, min_cost=0):
    """Multiply-adds per token: the head, plus each tail cluster weighted by tail_shares.

    tail_shares: the fraction of tokens whose label lies in each tail cluster, which is all the
    training loss needs of a tail; None counts every tail for every token (what
    AdaptiveSoftmax.log_probs computes, and its call with neither gather_rows nor tail_capacities).
    Its tail_capacities cost tail_shares = capacity / rows, in the batches that do not overflow.
    min_cost: see head_multiply_adds; optimal_cuts.py minimises this count over the cutoffs.
    """
    bounds = list(cutoffs) + [vocab_size]
    dims = tail_projection_dims(d_model, len(cutoffs), proj_factor, proj_dims)
    shares = [1.0] * len(cutoffs) if tail_shares is None else list(tail_shares)
    if len(shares) != len(cutoffs):
        raise ValueError(f"tail_shares={shares} must give one share per tail cluster ({len(cutoffs)}).")
    head = head_multiply_adds(d_model, bounds[0] + len(cutoffs), min_cost)
    tails = sum(share * tail_multiply_adds(d_model, dim, stop - start, min_cost)
                for share, dim, start, stop in zip(shares, dims, bounds[:-1], bounds[1:]))
    return float(head + tails)


def candidate_flops_per_token(config, seq_len, mem_len=None):
    """{candidate letter: forward FLOPs per token of one such block} for segments of seq_len tokens
    (a multiply-add is 2 FLOPs), with mem_len positions of memory (default: config.mem_len).

    Matmuls only. With D = d_model, A = num_heads * d_head, F = d_ffn, T = seq_len and
    K = mem_len + T keys:
      attention  2*D*A * (2 + 3*K/T)   q and output projections for each token; k, v and the
                                        relative encodings r projected at all K positions once per
                                        segment (r once per row: an upper bound, as the batch shares it)
                 + 3 * 2*A*K            content scores, position scores, weighted values
      dense      2 * 2*D*F
      identity   0
    Layer norms, softmaxes, the rel-shift and Gumbel mixing (O(D) or O(H*K) per token) are left out.
    """
    mem_len = config.mem_len if mem_len is None else mem_len
    d_model, attention_width, num_keys = config.d_model, config.num_heads * config.head_dim, mem_len + seq_len
    attention = 2 * d_model * attention_width * (2 + 3 * num_keys / seq_len) + 3 * 2 * attention_width * num_keys
    return {"A": attention, "D": 2 * 2 * d_model * config.d_ffn, "I": 0.0}


def flops_per_token(config, seq_len, training=False, tail_shares=None):
    """Analytic model FLOPs per token for segments of seq_len tokens: every block's candidates
    (candidate_flops_per_token), plus the output layer, 2 * softmax_multiply_adds: the head, and
    each tail cluster for the share of tokens whose label lies in it (tail_shares, e.g. from the
    unigram frequencies; None counts every tail for every token).

    The SuperNet runs attention and dense in every block; a fixed architecture only its named
    blocks. The embedding lookup is left out. training=True is 3x: the backward pass costs about
    twice the forward.
    """
    candidates = candidate_flops_per_token(config, seq_len)
    blocks = sum(candidates[kind] for kinds in config.block_kinds for kind in kinds)
    forward = blocks + 2 * softmax_multiply_adds(config.d_model, config.vocab_size, config.cutoffs, config.proj_factor,
                                                 config.proj_dims, tail_shares)
    return 3 * forward if training else forward
