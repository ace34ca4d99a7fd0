"""costs.py: the adaptive softmax's multiply-adds against its layer's weights and a hand count, and
each candidate block's FLOPs against its matmuls written out."""
import dataclasses

import numpy as np
import pytest

from adaptive_softmax import AdaptiveSoftmax
from config import ModelConfig
from costs import (candidate_flops_per_token, flops_per_token, head_multiply_adds, softmax_multiply_adds,
                   tail_multiply_adds, tail_projection_dims, tail_shares)

VOCAB, D_MODEL = 50, 16


def test_tail_shares_count_each_clusters_tokens():
    stream = np.array([1, 5, 9, 10, 11, 29, 30, 31, 49, 3])  # 10, 11, 29 in the first tail; 30, 31, 49 in the second.
    np.testing.assert_allclose(tail_shares(np.bincount(stream, minlength=VOCAB) / len(stream), (10, 30)), [0.3, 0.3])


def test_softmax_multiply_adds_match_the_weights_the_layer_multiplies():
    layer = AdaptiveSoftmax(VOCAB, (10, 30))
    layer.build((None, None, D_MODEL))
    kernels = [layer.head_kernel] + layer.tail_projections + layer.tail_kernels
    assert softmax_multiply_adds(D_MODEL, VOCAB, (10, 30)) == sum(int(np.prod(k.shape)) for k in kernels)
    # A tail counts only for its share of tokens: half the first tail's tokens, none of the second's.
    first_tail = int(np.prod(layer.tail_projections[0].shape) + np.prod(layer.tail_kernels[0].shape))
    head = int(np.prod(layer.head_kernel.shape))
    assert softmax_multiply_adds(D_MODEL, VOCAB, (10, 30), tail_shares=(0.5, 0.0)) == head + 0.5 * first_tail
    with pytest.raises(ValueError, match="tail_shares"):
        softmax_multiply_adds(D_MODEL, VOCAB, (10, 30), tail_shares=(0.5,))


def test_min_cost_saturates_each_matmul_below_that_many_columns():
    # D_MODEL 16: tail widths 16 // 4 = 4 and 16 // 16 = 1; the head has 10 + 2 columns, each tail 20 ids.
    expected = 16 * 25 + 0.5 * (16 * 4 + 4 * 25) + 0.25 * (16 * 1 + 1 * 25)
    assert softmax_multiply_adds(D_MODEL, VOCAB, (10, 30), tail_shares=(0.5, 0.25), min_cost=25) == expected
    assert softmax_multiply_adds(D_MODEL, VOCAB, (10, 30), tail_shares=(0.5, 0.25), min_cost=0) == (
        16 * 12 + 0.5 * (16 * 4 + 4 * 20) + 0.25 * (16 * 1 + 1 * 20))
    # Arrays of sizes, as optimal_cuts.py's dynamic program passes them.
    np.testing.assert_array_equal(head_multiply_adds(16, np.array([5, 30]), min_cost=25), [16 * 25, 16 * 30])
    np.testing.assert_array_equal(tail_multiply_adds(16, 4, np.array([5, 30]), min_cost=25),
                                  [16 * 4 + 4 * 25, 16 * 4 + 4 * 30])


def test_tail_projection_widths_follow_proj_factor_or_proj_dims():
    assert tail_projection_dims(128, 2, proj_factor=4) == [32, 8]
    assert tail_projection_dims(128, 2, proj_dims=[64, 16]) == [64, 16]
    with pytest.raises(ValueError, match="proj_dims"):
        tail_projection_dims(128, 2, proj_dims=[64])


def test_candidate_flops_are_the_blocks_matmuls_written_out():
    config = ModelConfig(vocab_size=VOCAB, d_model=16, num_heads=2, d_head=8, d_ffn=32, mem_len=4, cutoffs=(20,))
    seq_len, keys, width = 8, 4 + 8, 2 * 8
    # Per segment of 8 tokens: q [T, D] x [D, A]; k, v and r [K, D] x [D, A]; the output [T, A] x [A, D];
    # content scores, position scores and weighted values, each [T, K] x A per head pair.
    multiply_adds = seq_len * 16 * width + 3 * keys * 16 * width + seq_len * width * 16 + 3 * seq_len * keys * width
    flops = candidate_flops_per_token(config, seq_len)
    assert flops["A"] == pytest.approx(2 * multiply_adds / seq_len)
    assert flops["D"] == 2 * (16 * 32 + 32 * 16) and flops["I"] == 0
    assert candidate_flops_per_token(config, seq_len, mem_len=40)["A"] > flops["A"]  # A longer memory costs more.


def test_model_flops_add_the_blocks_and_the_output_layer():
    config = ModelConfig(vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=32, mem_len=4, cutoffs=(20, 35), num_layers=6)
    blocks = candidate_flops_per_token(config, 8)
    output = 2 * softmax_multiply_adds(16, VOCAB, (20, 35), tail_shares=(0.3, 0.1))

    def flops(architecture, **kwargs):
        return flops_per_token(dataclasses.replace(config, architecture=architecture), 8, tail_shares=(0.3, 0.1),
                               **kwargs)

    assert flops("AADDDI") == pytest.approx(2 * blocks["A"] + 3 * blocks["D"] + output)
    assert flops(None) == pytest.approx(6 * (blocks["A"] + blocks["D"]) + output)  # The SuperNet runs both.
    assert flops(None, training=True) == pytest.approx(3 * flops(None))
