"""Parameter counts of BNInception, checked against a count made from the Figure 5 table alone.

`count_from_table` does not look at any Keras model nor at keras_bninception.models.figure5: it
has its own transcription of the table (the paper's appendix, Figure 5) and adds up the weights of
every convolution by hand. tf_slim's own test (inception_v2_test.py,
testModelHasExpectedNumberOfParameters) fixes the tf_slim-compatible base at 10,173,112
variables, which anchors the transcription.
"""

from __future__ import annotations

import pytest

from keras_bninception.models import BNInception

# Figure 5, modules 3a..5b: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool proj
# (0 = pass through, the stride-2 modules 3c and 4e). 4c/4d: the table says 128, tf_slim 96.
TABLE = (
    ("3a", 64, 64, 64, 64, 96, 32),
    ("3b", 64, 64, 96, 64, 96, 64),
    ("3c", 0, 128, 160, 64, 96, 0),
    ("4a", 224, 64, 96, 96, 128, 128),
    ("4b", 192, 96, 128, 96, 128, 128),
    ("4c", 160, 128, 160, 128, 160, 128),
    ("4d", 96, 128, 192, 160, 192, 128),
    ("4e", 0, 128, 192, 192, 256, 0),
    ("5a", 352, 192, 320, 160, 224, 128),
    ("5b", 352, 192, 320, 192, 224, 128),
)

TF_SLIM_BASE_VARIABLES = 10_173_112  # tf_slim's inception_v2_test.py
TF_SLIM_MOVING_STATISTICS = 19_776  # moving mean and variance of every BN channel (2 x 9,888)


def count_from_table(
    depth_multiplier: float = 1.0,
    min_depth: int = 16,
    batch_norm: bool = True,
    scale: bool = True,
    slim_first_conv: bool = False,
    proj_4c_4d: int = 96,
    classes: int | None = None,
) -> tuple[int, int]:
    """(number of weights, number of BN moving statistics) of the network the table describes."""

    def d(c: int) -> int:
        return max(int(c * depth_multiplier), min_depth)

    per_channel = (4 if scale else 3) if batch_norm else 1  # BN gamma/beta/mean/var, or a bias
    moving = 0

    def conv(k: int, cin: int, cout: int) -> int:
        nonlocal moving
        moving += 2 * cout if batch_norm else 0
        return k * k * cin * cout + per_channel * cout

    # conv 7x7 separable, depthwise x min(int(depth(64) / 3), 8), then pointwise to depth(64).
    mult = min(int(d(64) / 3), 8)
    total = 7 * 7 * 3 * mult + 3 * mult * d(64)
    if slim_first_conv or not batch_norm:
        total += d(64)  # a bias, no BN
    else:
        total += per_channel * d(64)
        moving += 2 * d(64)
    total += conv(1, d(64), d(64)) + conv(3, d(64), d(192))
    cin = d(192)
    for name, n1, r3, n3, rd, nd, proj in TABLE:
        proj = proj_4c_4d if name in ("4c", "4d") else proj
        cout = d(n3) + d(nd)
        total += conv(1, cin, d(r3)) + conv(3, d(r3), d(n3))
        total += conv(1, cin, d(rd)) + conv(3, d(rd), d(nd)) + conv(3, d(nd), d(nd))
        if n1:
            total += conv(1, cin, d(n1))
            cout += d(n1)
        if proj:
            total += conv(1, cin, d(proj))
            cout += d(proj)
        else:
            cout += cin
        cin = cout
    if classes:
        total += cin * classes + classes
    return total, moving


def _build(**kwargs):
    kwargs.setdefault("weights", None)
    kwargs.setdefault("include_top", False)
    kwargs.setdefault("input_shape", (32, 32, 3))  # the counts do not depend on the input size
    return BNInception(**kwargs)


def _moving(model) -> int:
    return sum(int(w.numpy().size) for w in model.non_trainable_weights)


def test_table_count_matches_tf_slim():
    assert count_from_table(scale=False, slim_first_conv=True) == (
        TF_SLIM_BASE_VARIABLES,
        TF_SLIM_MOVING_STATISTICS,
    )
    # With tf_slim's 1001-way 1x1-conv logits: + 1024 * 1001 weights + 1001 biases.
    assert count_from_table(scale=False, slim_first_conv=True, classes=1001)[0] == 11_199_137


def test_slim_compatible_base_has_tf_slims_variable_count():
    model = _build(slim_compatible=True)
    assert model.count_params() == TF_SLIM_BASE_VARIABLES
    assert _moving(model) == TF_SLIM_MOVING_STATISTICS
    assert len(model.weights) == len({w.path for w in model.weights})


@pytest.mark.parametrize(
    "kwargs, expected_kwargs",
    [
        # The default: BN (with gamma) after every convolution, the first one included.
        ({}, {}),
        ({"include_top": True, "classes": 1000}, {"classes": 1000}),
        # The paper's "Inception" baseline: conv biases, no BN.
        ({"batch_norm": False}, {"batch_norm": False}),
        # The table's literal 4c/4d pool projections (608 channels).
        ({"mixed_4c_4d": "paper"}, {"proj_4c_4d": 128}),
        ({"depth_multiplier": 0.5}, {"depth_multiplier": 0.5}),
        ({"depth_multiplier": 2.0}, {"depth_multiplier": 2.0}),
        ({"depth_multiplier": 0.25, "min_depth": 8}, {"depth_multiplier": 0.25, "min_depth": 8}),
    ],
)
def test_option_counts_from_first_principles(kwargs, expected_kwargs):
    model = _build(**kwargs)
    total, moving = count_from_table(**expected_kwargs)
    assert model.count_params() == total
    assert _moving(model) == moving


def test_docstring_multiply_adds_are_measured():
    from keras_bninception.flops import count_multiply_adds

    measured = count_multiply_adds(
        BNInception(
            weights=None,
        )
    )
    assert f"{measured:,} multiply-adds per 224x224 image" in " ".join(BNInception.__doc__.split())
    # The commonly quoted cost of BN-Inception: about 1.94 G multiply-adds (~3.9 GFLOPs).
    assert 1.9e9 < measured < 1.95e9
