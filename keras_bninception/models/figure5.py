"""The BN-Inception network of Ioffe & Szegedy (2015), appendix Figure 5, as data.

One row per block of the paper's table, in the paper's order. The rows carry the paper's name of
the block ("3a", ...) and the scope name tf_slim's ``inception_v2`` gives it ("Mixed_3b", ...),
which the Keras model uses for its layer names, end points and checkpoint variable names.

Depths are the un-scaled depths of the table; ``depth_multiplier`` / ``min_depth`` are applied when
the network is built (tf_slim's rule, :func:`scaled_depth`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

MIXED_4C_4D_CHOICES = ("tf_slim", "paper")
# The smallest input side: five stride-2 stages (SAME padding) leave a map of ceil(n / 32).
MIN_INPUT_SIZE = 32


@dataclasses.dataclass(frozen=True)
class StemRow:
    """A convolution or pooling layer of the network's stem (before the Inception modules).

    Attributes:
        paper_name: the row of Figure 5 the layer belongs to.
        scope: tf_slim's scope name (also the Keras layer name and the end-point name).
        kind: "separable_conv", "conv" or "max_pool".
        kernel: square kernel size.
        stride: stride (SAME padding everywhere, as tf_slim).
        depth: output channels before depth scaling (convolutions only).
        separable_multiplier: channel multiplier of the depthwise 7x7 convolution ("x8" in the
            paper; `blocks.stem` caps it as tf_slim does: ``in_channels * multiplier <= depth``).
    """

    paper_name: str
    scope: str
    kind: Literal["separable_conv", "conv", "max_pool"]
    kernel: int
    stride: int
    depth: int = 0
    separable_multiplier: int = 0


@dataclasses.dataclass(frozen=True)
class InceptionRow:
    """One Inception module of Figure 5: the columns of the table.

    A zero in ``n_1x1`` means the module has no 1x1 branch; ``pool_proj == 0`` means the pooling
    branch passes through without projection (the stride-2 modules 3c and 4e).

    Attributes:
        paper_name: "3a" ... "5b".
        scope: tf_slim's scope ("Mixed_3b" ... "Mixed_5c").
        stride: 1, or 2 for the modules that reduce the grid (their last 3x3 convs and their pool
            have stride 2).
        n_1x1: "#1x1".
        n_3x3_reduce: "#3x3 reduce".
        n_3x3: "#3x3".
        n_double_3x3_reduce: "double #3x3 reduce".
        n_double_3x3: "double #3x3" (both stacked 3x3 convs have this depth).
        pool: "avg" or "max".
        pool_proj: depth of the 1x1 projection after the pool, 0 for "pass through".
    """

    paper_name: str
    scope: str
    stride: int
    n_1x1: int
    n_3x3_reduce: int
    n_3x3: int
    n_double_3x3_reduce: int
    n_double_3x3: int
    pool: Literal["avg", "max"]
    pool_proj: int


# Figure 5, rows "convolution*" to "max pool" before inception (3a). The table's row
# "convolution 1x1 -> 3x3" (#3x3 reduce 64, #3x3 192) is two layers here, as in tf_slim.
STEM: tuple[StemRow, ...] = (
    StemRow("conv 7x7 (separable)", "Conv2d_1a_7x7", "separable_conv", 7, 2, 64, 8),
    StemRow("max pool", "MaxPool_2a_3x3", "max_pool", 3, 2),
    StemRow("conv 1x1 -> 3x3 (reduce)", "Conv2d_2b_1x1", "conv", 1, 1, 64),
    StemRow("conv 1x1 -> 3x3", "Conv2d_2c_3x3", "conv", 3, 1, 192),
    StemRow("max pool", "MaxPool_3a_3x3", "max_pool", 3, 2),
)

# Figure 5, inception (3a) to inception (5b), column by column:
#            paper  scope       stride #1x1 #3x3r #3x3 #d3x3r #d3x3 pool  proj
_INCEPTION_TABLE: tuple[InceptionRow, ...] = (
    InceptionRow("3a", "Mixed_3b", 1, 64, 64, 64, 64, 96, "avg", 32),
    InceptionRow("3b", "Mixed_3c", 1, 64, 64, 96, 64, 96, "avg", 64),
    InceptionRow("3c", "Mixed_4a", 2, 0, 128, 160, 64, 96, "max", 0),
    InceptionRow("4a", "Mixed_4b", 1, 224, 64, 96, 96, 128, "avg", 128),
    InceptionRow("4b", "Mixed_4c", 1, 192, 96, 128, 96, 128, "avg", 128),
    InceptionRow("4c", "Mixed_4d", 1, 160, 128, 160, 128, 160, "avg", 128),
    InceptionRow("4d", "Mixed_4e", 1, 96, 128, 192, 160, 192, "avg", 128),
    InceptionRow("4e", "Mixed_5a", 2, 0, 128, 192, 192, 256, "max", 0),
    InceptionRow("5a", "Mixed_5b", 1, 352, 192, 320, 160, 224, "avg", 128),
    InceptionRow("5b", "Mixed_5c", 1, 352, 192, 320, 192, 224, "max", 128),
)

# Erratum of the table at 4c and 4d. Figure 5 lists "avg + 128" for both modules, but then the
# modules output 160+160+160+128 = 608 and 96+192+192+128 = 608 channels, not the 576 the table's
# output-size column states. tf_slim's inception_v2 (whose ImageNet checkpoint we load) uses
# 96-channel pool projections there, which gives the listed 576; the Caffe port used by PyTorch
# users (pretrainedmodels' "bninception") keeps the literal 128, so 4c/4d output 608 and 4e
# outputs 1056. `mixed_4c_4d="tf_slim"` (the default) takes 96, `"paper"` the literal 128.
_ERRATUM_4C_4D_POOL_PROJ = {"tf_slim": 96, "paper": 128}


def inception_rows(mixed_4c_4d: str = "tf_slim") -> tuple[InceptionRow, ...]:
    """The Inception modules of Figure 5, with the 4c/4d pool projections chosen by `mixed_4c_4d`.

    Args:
        mixed_4c_4d: "tf_slim" (96-channel pool projections in 4c and 4d: 576 channels, matching
            the table's output sizes) or "paper" (the table's literal 128: 608 channels, as the
            Caffe port).

    Returns:
        The ten rows 3a ... 5b.
    """
    if mixed_4c_4d not in _ERRATUM_4C_4D_POOL_PROJ:
        raise ValueError(
            f"`mixed_4c_4d` must be one of {MIXED_4C_4D_CHOICES}; "
            f"received mixed_4c_4d={mixed_4c_4d!r}"
        )
    proj = _ERRATUM_4C_4D_POOL_PROJ[mixed_4c_4d]
    return tuple(
        dataclasses.replace(row, pool_proj=proj) if row.paper_name in ("4c", "4d") else row
        for row in _INCEPTION_TABLE
    )


def scaled_depth(depth: int, depth_multiplier: float = 1.0, min_depth: int = 16) -> int:
    """tf_slim's width rule: ``max(int(depth * depth_multiplier), min_depth)``."""
    return max(int(depth * depth_multiplier), min_depth)


END_POINTS: tuple[str, ...] = tuple(r.scope for r in STEM) + tuple(
    r.scope for r in _INCEPTION_TABLE
)
"""tf_slim's end-point names, in network order: Conv2d_1a_7x7 ... Mixed_5c."""
